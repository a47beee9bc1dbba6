"""Admission control: the token first (401 at the door), then a bounded number of requests inside the service, a
bounded queue, then 503 + Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from search.service._admission import Admission
from tests.search.servers import uvicorn_thread

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STRANGERS: list[dict[str, Any]] = [  # requests without the token, as a flood would send them
    {"method": "GET", "url": "/api/studies"},
    {"method": "GET", "url": "/api/studies", "headers": {"Authorization": "Bearer wrong-token-of-some-length"}},
    {"method": "GET", "url": "/api/studies", "headers": {"Authorization": f"Basic {TOKEN}"}},
    {"method": "GET", "url": "/api/studies", "headers": {"Cookie": "prunetune_token=wrong"}},
    {"method": "GET", "url": "/no/such/path"},
    {"method": "POST", "url": f"/api/studies?token={TOKEN}", "json": {"config": {}}},  # ?token= is for GET only
]


class _Gate:
    """An ASGI app whose requests wait until the test opens the gate; it counts how many are inside at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = self.most = self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        self.inside += 1
        self.most = max(self.most, self.inside)
        await self.open.wait()
        self.inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _client(app: Admission) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _until(condition: Any, what: str, tries: int = 400) -> None:
    """Wait (at most 2 s) until ``condition()`` holds."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def _refused_at_the_door(r: httpx.Response) -> bool:
    return r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and set(r.json()) == {"error"}


async def _burst(concurrent: int, waiting: int, n: int) -> tuple[list[httpx.Response], _Gate]:
    gate = _Gate()
    app = Admission(gate, token=TOKEN, concurrent=concurrent, waiting=waiting, retry_after=2)
    async with _client(app) as client:
        tasks = [asyncio.create_task(client.get(f"/{i}", headers=AUTH)) for i in range(n)]
        refused = max(0, n - concurrent - waiting)
        await _until(lambda: gate.inside == min(n, concurrent) and sum(t.done() for t in tasks) >= refused, "full")
        gate.open.set()
        return list(await asyncio.gather(*tasks)), gate


def test_a_burst_waits_its_turn_and_a_flood_is_told_to_come_back() -> None:
    responses, gate = asyncio.run(_burst(concurrent=2, waiting=3, n=8))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 5 + [503] * 3  # 2 in, 3 queued, 3 refused at once
    assert gate.most == 2  # never more than `concurrent` inside
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2" and "busy" in refused.json()["error"]


@pytest.mark.parametrize(
    "how",
    [
        {"headers": AUTH},
        {"headers": {"Authorization": f"bearer {TOKEN}"}},  # the scheme is case-insensitive
        {"headers": {"Cookie": f"prunetune_token={TOKEN}"}},  # the page cookie
        {"params": {"token": TOKEN}},  # a browser's first visit to a page
    ],
)
def test_every_way_of_carrying_the_token_is_admitted(how: dict[str, Any]) -> None:
    async def run() -> httpx.Response:
        gate = _Gate()
        gate.open.set()
        async with _client(Admission(gate, token=TOKEN)) as client:
            return await client.get("/studies/t", **how)

    assert asyncio.run(run()).text == "ok"


def test_strangers_get_401_at_once_while_the_queue_is_full_and_take_no_place() -> None:
    async def run() -> None:
        gate = _Gate()
        app = Admission(gate, token=TOKEN, concurrent=2, waiting=3)
        async with _client(app) as client:
            slow = [asyncio.create_task(client.get("/slow", headers=AUTH)) for _ in range(5)]
            await _until(lambda: app.load == (2, 3), "2 users are in and 3 wait")
            assert (await client.get("/one-more", headers=AUTH)).status_code == 503  # the queue is full
            for _ in range(5):  # the gate stays shut: each answer comes without a place
                for request in STRANGERS:
                    assert _refused_at_the_door(await client.request(**request)), request
            assert app.load == (2, 3) and gate.calls == 2  # nothing taken, nothing reached the service
            gate.open.set()
            assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 5
            assert app.load == (0, 0) and gate.calls == 5

    asyncio.run(run())


def test_a_user_is_admitted_at_once_during_an_unauthenticated_flood() -> None:
    async def run() -> None:
        gate = _Gate()
        app = Admission(gate, token=TOKEN, concurrent=1, waiting=0)  # one place: any stranger in it would 503 her
        async with _client(app) as client:
            flood = [asyncio.create_task(client.request(**STRANGERS[i % len(STRANGERS)])) for i in range(300)]
            user = asyncio.create_task(client.get("/api/studies", headers=AUTH))
            flood += [asyncio.create_task(client.request(**STRANGERS[i % len(STRANGERS)])) for i in range(300)]
            await _until(lambda: gate.inside == 1, "the user is inside")
            assert app.load == (1, 0) and gate.calls == 1  # she holds the one place, nobody else got in
            gate.open.set()
            assert (await user).status_code == 200
            assert all(_refused_at_the_door(r) for r in await asyncio.gather(*flood))

    asyncio.run(run())


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrent >= 1"):
        Admission(_Gate(), token=TOKEN, concurrent=0)


# The real server (uvicorn on loopback): slow users hold their places by sending their bodies slowly.


def _load(app: Any) -> tuple[int, int] | None:
    """The app's :attr:`Admission.load`; None before the first request (Starlette builds the stack then)."""
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, Admission):
        layer = layer.app
    return None if layer is None else layer.load


async def _held_body(release: asyncio.Event) -> AsyncIterator[bytes]:
    """A request body that arrives in two parts, the second once the test releases it (not JSON: a 422)."""
    yield b'{"config": '
    await release.wait()
    yield b"not json}"


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from search.service._app import create_app

    return create_app(f"sqlite:///{tmp_path / 'served.db'}", TOKEN, max_concurrent=1, max_waiting=1)


async def _slow_stranger(base: str) -> tuple[bytes, asyncio.StreamWriter]:
    """A POST without the token whose body never finishes arriving (a raw socket, so that the answer can be read
    before the body is sent): the answer's status line (within 5 s), and the connection, still open."""
    url = httpx.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = b"POST /api/studies HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 900\r\n"
    writer.write(head + b'\r\n{"config": ')
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return answer.split(b"\r\n")[0], writer


def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


def test_a_real_server_answers_strangers_401_not_503_when_users_fill_its_queue(app: Any) -> None:
    async def run(base: str) -> None:
        release = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            held = [
                asyncio.create_task(client.post("/api/studies", headers=AUTH, content=_held_body(release)))
                for _ in range(2)
            ]
            await _until(lambda: _load(app) == (1, 1), "one user is in and one waits", tries=2000)
            assert (await client.get("/api/studies", headers=AUTH)).status_code == 503
            for _ in range(5):
                for request in STRANGERS:
                    assert _refused_at_the_door(await client.request(**request)), request
            slow = [await _slow_stranger(base) for _ in range(3)]  # answered before their bodies arrive
            assert [status for status, _ in slow] == [b"HTTP/1.1 401 Unauthorized"] * 3
            assert _load(app) == (1, 1)
            _close([writer for _, writer in slow])
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [422, 422]
            assert (await client.get("/api/studies", headers=AUTH)).json() == []

    with uvicorn_thread(app) as base:
        asyncio.run(run(base))


def test_a_real_server_admits_every_user_request_during_a_flood(app: Any) -> None:
    async def stranger(client: httpx.AsyncClient, i: int, done: asyncio.Event, codes: list[int]) -> None:
        for j in range(200):  # until the user is done (bounded)
            if done.is_set():
                return
            codes.append((await client.request(**STRANGERS[(i + j) % len(STRANGERS)])).status_code)

    async def run(base: str) -> None:
        codes: list[int] = []
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=32)) as pool:
            flood = asyncio.gather(*(stranger(pool, i, done, codes) for i in range(32)))
            slow = await asyncio.gather(*(_slow_stranger(base) for _ in range(8)))  # they would hold the place
            async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as user:
                await _until(lambda: len(codes) >= 32, "the flood is under way", tries=2000)
                before = len(codes)
                mine = [(await user.get("/api/studies")).status_code for _ in range(10)]
                during = len(codes) - before
            done.set()
            await flood
            _close([writer for _, writer in slow])
        assert mine == [200] * 10  # one place, and not one of the user's requests got a 503
        assert {status for status, _ in slow} == {b"HTTP/1.1 401 Unauthorized"}
        assert during > 0 and set(codes) == {401}  # the flood went on meanwhile, and was refused

    with uvicorn_thread(app) as base:
        asyncio.run(run(base))
