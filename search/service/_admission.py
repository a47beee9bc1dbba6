"""Admission control: the token first, then at most N requests inside the service, a bounded queue, then 503.

Every request reads the store, whose engine holds a bounded pool of
connections (SQLAlchemy's default: 5, plus 10 overflow); the ASGI server
accepts far more requests at once than that, and requests waiting for a pool
connection time out after 30 s with a 500. :class:`Admission` lets
``concurrent`` requests in at a time, queues up to ``waiting`` more in arrival
order, and answers the rest at once with ``503 Service Unavailable``, a
``Retry-After`` header and a one-line JSON error, so a burst of readers slows
down instead of failing, and a flood is told to come back.

Auth comes before admission. A request that does not carry the server's token
(:func:`search.service._security.refusal`, the same test and the same 401 as
every route's ``authorize`` dependency) is answered ``401`` at the door, from
its headers and URL alone: it never waits for a place, never takes a slot,
never has its body read and never touches the store. Strangers therefore
cannot fill the queue and push authenticated users into 503s, however many
they are; what they still cost is the server's parsing of their requests.

Public paths: none. Every route of the service, the API docs and their assets
included, is behind the token, so every request without it is refused here,
whatever its path (an unknown path too: 401 rather than 404, so a stranger
learns nothing of what is served). Should a public route be added one day (a
health check), it must not share the authenticated users' places: give it a
small limit of its own in this middleware.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse

from search.service._security import unauthorized

__all__ = ["Admission"]


class Admission:
    """ASGI middleware (see the module docs): ``token`` is the server's; ``retry_after`` seconds go in the 503's
    header."""

    def __init__(self, app: Any, *, token: str, concurrent: int = 8, waiting: int = 64, retry_after: int = 1) -> None:
        if concurrent < 1 or waiting < 0:
            raise ValueError(f"admission needs concurrent >= 1 and waiting >= 0, got {concurrent} and {waiting}")
        self.app, self.token = app, token
        self.concurrent, self.waiting, self.retry_after = concurrent, waiting, retry_after
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request
        self._inside = self._queued = 0

    @property
    def load(self) -> tuple[int, int]:
        """How many requests are inside the service and how many wait for a place, now."""
        return self._inside, self._queued

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = await unauthorized(scope, self.token)
        if refused is not None:
            return await refused(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrent)
        if self._slots.locked() and self._queued >= self.waiting:
            return await self._busy()(scope, receive, send)
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        self._inside += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._inside -= 1
            self._slots.release()

    def _busy(self) -> JSONResponse:
        error = f"the server is busy ({self.concurrent} requests in, {self.waiting} waiting): retry shortly"
        return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": str(self.retry_after)})
