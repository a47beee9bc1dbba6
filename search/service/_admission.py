"""Admission control: at most N requests inside the service at once, a bounded queue, then 503.

Every request reads the store, whose engine holds a bounded pool of
connections (SQLAlchemy's default: 5, plus 10 overflow); the ASGI server
accepts far more requests at once than that, and requests waiting for a pool
connection time out after 30 s with a 500. :class:`Admission` lets
``concurrent`` requests in at a time, queues up to ``waiting`` more in arrival
order, and answers the rest at once with ``503 Service Unavailable``, a
``Retry-After`` header and a one-line JSON error, so a burst of readers slows
down instead of failing, and a flood is told to come back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["Admission"]


class Admission:
    """ASGI middleware (see the module docs); ``retry_after`` seconds go in the 503's header."""

    def __init__(self, app: Any, *, concurrent: int = 8, waiting: int = 64, retry_after: int = 1) -> None:
        if concurrent < 1 or waiting < 0:
            raise ValueError(f"admission needs concurrent >= 1 and waiting >= 0, got {concurrent} and {waiting}")
        self.app, self.concurrent, self.waiting, self.retry_after = app, concurrent, waiting, retry_after
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request
        self._queued = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrent)
        if self._slots.locked() and self._queued >= self.waiting:
            return await self._refuse(send)
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _refuse(self, send: Any) -> None:
        error = f"the server is busy ({self.concurrent} requests in, {self.waiting} waiting): retry shortly"
        resp = JSONResponse({"error": error}, status_code=503, headers={"Retry-After": str(self.retry_after)})
        await send({"type": "http.response.start", "status": 503, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})
