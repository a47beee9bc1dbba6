"""Admission control: a bounded number of requests inside the service, a bounded queue, then 503 + Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from search.service._admission import Admission


class _Gate:
    """An ASGI app whose requests wait until the test opens the gate; it counts how many are inside at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = self.most = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        await self.open.wait()
        self.inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _burst(concurrent: int, waiting: int, n: int) -> tuple[list[httpx.Response], _Gate]:
    gate = _Gate()
    app = Admission(gate, concurrent=concurrent, waiting=waiting, retry_after=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        tasks = [asyncio.create_task(client.get(f"/{i}")) for i in range(n)]
        for _ in range(200):  # until every request is inside, queued or refused
            await asyncio.sleep(0.005)
            if gate.inside == min(n, concurrent) and sum(t.done() for t in tasks) >= max(0, n - concurrent - waiting):
                break
        gate.open.set()
        return list(await asyncio.gather(*tasks)), gate


def test_a_burst_waits_its_turn_and_a_flood_is_told_to_come_back() -> None:
    responses, gate = asyncio.run(_burst(concurrent=2, waiting=3, n=8))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 5 + [503] * 3  # 2 in, 3 queued, 3 refused at once
    assert gate.most == 2  # never more than `concurrent` inside
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2" and "busy" in refused.json()["error"]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrent >= 1"):
        Admission(_Gate(), concurrent=0)
