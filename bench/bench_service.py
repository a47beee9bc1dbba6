"""The service under load: 200 concurrent readers and 20 submissions while a study is being filled; an
authenticated user alone and under an unauthenticated flood.

    .venv/bin/python bench/bench_service.py [--pg URL] [--only load|flood] [--readers 200] [--requests 5]
        [--submissions 20] [--user-requests 400] [--rounds 4] [--flood-clients 64] [--flood-rate 200]
        [--flood-slow 96]
    .venv/bin/python bench/bench_service.py --smoke   # what CI runs: tiny sizes, seconds

A real ``prunetune serve`` (uvicorn, on a free loopback port, default admission limits: 8
requests in at once, 64 waiting) serves a new store; every request goes to 127.0.0.1 and the
bench stops by itself (every loop is bounded in count and time).

*flood* (first, on a quiet store): one authenticated user asks for the study
(``GET /api/studies/{name}``, a store read), one request after another, in ``--rounds`` rounds
of ``--user-requests / --rounds`` requests alone, then as many while another process floods the
server with requests without the token, so that the machine's other work weighs on both alike
(``--flood-nice 10`` lets the flood's client take only what CPU is left over: on one machine,
the nearest thing to an attacker elsewhere). The flood: a pool of
``--flood-clients`` connections (a GET without a token, a GET with a wrong one, a POST without
one, in turn) and ``--flood-slow`` strangers that each send a POST's head and part of its body
and wait for the answer before they send another (what holds a place longest if the token is
checked after admission: 96 of them are more than the 8 + 64 places), ``--flood-rate``
requests/s in all (0: as many as they can). Measured: the user's median and p99 latency (each
request is given ``--user-patience`` seconds, its 503s waited out for their ``Retry-After``;
one not answered by then is given up and counted; the bench fails if the user gets a 503 or
gives up under the flood) and the flood's answers by status code.

*load*: ``--fillers`` (8) torch-free workers (``bench/bench_scale.py``'s control path) fill
one study while the readers read it. Each reader (an asyncio task with its own connection)
asks ``--requests`` times, alternately, for the study's front figure (``/api/studies/{name}/figures/front``, what
the live page polls) and the live page itself (``/studies/{name}``); a 503 is waited out for
its ``Retry-After`` and asked again. Meanwhile 20 studies are submitted (``POST /api/studies``)
and 4 claimers take them from the queue concurrently (``Submissions.claim``, what ``prunetune
worker`` calls; they finish each at once instead of running it, so the bench measures the
queue, not training). Measured: p50 / p99 latency per kind of request (successful ones, retries
included), errors (anything but 200 / 202 / 503: must be 0), 503s answered, and whether every
submission was claimed exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_scale import WORKER  # this folder is on the path when a bench runs

from storage import StudyStore, Submissions

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``prunetune serve`` on a free loopback port, its output in ``log``; waits until it answers."""
    port = _free_port()
    env = {**os.environ, "PRUNETUNE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "search.cli", "serve", "--storage", url, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/api/studies", headers=AUTH, timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("prunetune serve did not answer within 60 s")


def _study(url: str, name: str) -> None:
    StudyStore(url).ensure_study(
        name,
        model_spec="zoo:resnet20",
        data_spec="digits",
        budget={"macs": "50%"},
        space_options={},
        base_cost={"macs": 1000, "params": 1000, "bytes": 4000},
    )


def _fillers(url: str, name: str, n: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [url, name, "400", "800"]
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *argv, str(i), "0.5"], stdout=subprocess.PIPE, text=True, env=env
        )
        for i in range(n)
    ]


async def _reader(base: str, name: str, k: int, out: dict[str, list], i: int) -> None:
    paths = {"front figure": f"/api/studies/{name}/figures/front", "live page": f"/studies/{name}"}
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as client:
        for j in range(k):
            kind = list(paths)[(i + j) % 2]
            t0 = time.perf_counter()
            for _ in range(200):  # bounded retries of 503s
                r = await client.get(paths[kind])
                if r.status_code != 503:
                    break
                out["503"].append(kind)
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            if r.status_code == 200:
                out[kind].append(time.perf_counter() - t0)
            else:
                out["errors"].append(f"{kind}: {r.status_code}")


async def _submit(base: str, n: int, out: dict[str, list]) -> None:
    config = {"model": {"spec": "zoo:resnet20"}, "data": {"spec": "digits"}, "budget": {"macs": "50%"}}
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as client:
        for i in range(n):
            body = {"config": {**config, "search": {"candidates": 2, "study": f"submitted-{i}"}}}
            for _ in range(200):  # bounded retries of 503s
                r = await client.post("/api/studies", json=body)
                if r.status_code != 503:
                    break
                out["503"].append("submission")
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            out["submitted" if r.status_code == 202 else "errors"].append(r.status_code)


def _claimers(url: str, n: int, stop: threading.Event, claims: list[int]) -> list[threading.Thread]:
    def claim(me: str) -> None:
        queue = Submissions(StudyStore(url))
        while not stop.is_set():
            sub = queue.claim(me)
            if sub is None:
                time.sleep(0.05)
                continue
            claims.append(sub.id)
            queue.finish(sub.id, me)

    return [threading.Thread(target=claim, args=(f"bench:{i}",), daemon=True) for i in range(n)]


async def _load(base: str, name: str, args: argparse.Namespace) -> dict[str, list]:
    out: dict[str, list] = {"front figure": [], "live page": [], "503": [], "errors": [], "submitted": []}
    readers = [_reader(base, name, args.requests, out, i) for i in range(args.readers)]
    await asyncio.gather(*readers, _submit(base, args.submissions, out))
    return out


def _ms(values: list[float], q: float, digits: int = 0) -> str:
    """The ``q``-th percentile of ``values`` (seconds) in ms."""
    if not values:
        return "-"
    return f"{1000 * (statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]):.{digits}f}"


# The flood: an authenticated user alone, then under a flood of requests without the token.

_STRANGERS: list[dict[str, Any]] = [
    {"method": "GET", "headers": {}},
    {"method": "GET", "headers": {"Authorization": "Bearer a-wrong-token-0123456789"}},
    {"method": "POST", "headers": {}, "json": {"config": {"model": {"spec": "zoo:resnet20"}}}},
]


async def _user(base: str, path: str, n: int, patience: float) -> tuple[list[float], int, int]:
    """``n`` authenticated GETs of ``path``, one after another, each given ``patience`` seconds (its 503s waited
    out for their ``Retry-After``): the seconds of each one answered, the 503s seen, the requests given up."""
    times, busy, gave_up = [], 0, 0
    async with httpx.AsyncClient(base_url=base, headers=AUTH) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                r = await client.get(path, timeout=patience)
                while r.status_code == 503 and time.perf_counter() - t0 < patience:
                    busy += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    r = await client.get(path, timeout=max(0.1, patience - (time.perf_counter() - t0)))
            except httpx.TimeoutException:
                gave_up += 1
                continue
            if r.status_code == 200:
                times.append(time.perf_counter() - t0)
            elif r.status_code == 503:
                busy, gave_up = busy + 1, gave_up + 1
            else:
                raise SystemExit(f"FAILED: the user's GET {path} was answered {r.status_code}")
    return times, busy, gave_up


class _Switch:
    """The flood's state, shared with the bench's process: on while ``flooding`` is set, over once ``stop`` is."""

    def __init__(self, flooding: Any, stop: Any, seconds: float) -> None:
        self.flooding, self.stop, self.deadline = flooding, stop, time.monotonic() + seconds

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.deadline

    def on(self) -> bool:
        return self.flooding.is_set() and not self.over()

    async def wait_on(self) -> bool:
        """Wait (polling) until the flood is on; False if it is over instead."""
        while not self.on():
            if self.over():
                return False
            await asyncio.sleep(0.05)
        return True


async def _stranger(
    pool: httpx.AsyncClient, path: str, i: int, every: float, sw: _Switch, counts: Counter[str]
) -> None:
    """Requests without the token, one every ``every`` seconds (0: back to back) while the flood is on."""
    due = time.monotonic()
    while await sw.wait_on():
        due = max(due, time.monotonic() - every)  # no catching up after a pause
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        due += every
        try:
            r = await pool.request(url=path, **_STRANGERS[i % len(_STRANGERS)])
            counts[str(r.status_code)] += 1
        except httpx.HTTPError as exc:
            counts[type(exc).__name__] += 1
        i += 1


async def _slow_stranger(
    base: str, path: str, every: float, sw: _Switch, counts: Counter[str], waited: list[float]
) -> None:
    """POSTs without the token whose bodies never finish, one every ``every`` seconds at most: the head and part
    of the body, then wait for the answer while the flood is on; each answer's seconds go to ``waited``."""
    url = httpx.URL(base)
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n"
    due = time.monotonic()
    while await sw.wait_on():
        due = max(due, time.monotonic() - every)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        due += every
        t0, answer = time.perf_counter(), await _held_post(url, head.encode() + b'{"config": ', sw, counts)
        if answer:
            counts[f"slow {answer.split()[1].decode()}"] += 1
            waited.append(time.perf_counter() - t0)
        else:
            counts["slow, unanswered when the flood paused"] += 1


async def _held_post(url: httpx.URL, start: bytes, sw: _Switch, counts: Counter[str]) -> bytes:
    """Send ``start`` (a request's head and part of its body) on a new connection and wait for the answer's status
    line while the flood is on (the connection is dropped when it pauses); b"" if none came."""
    answer, writer = b"", None
    try:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(start)
        await writer.drain()
        while not answer and sw.on():
            try:
                answer = await asyncio.wait_for(reader.readline(), 0.2)
            except TimeoutError:
                continue
    except OSError as exc:
        counts[f"slow {type(exc).__name__}"] += 1
    finally:
        if writer is not None:
            writer.close()
    return answer


async def _flood(base: str, path: str, args: argparse.Namespace, sw: _Switch) -> dict[str, Any]:
    """The flood (see the module docs), on and off as the bench's process says, until it is over."""
    counts: Counter[str] = Counter()
    waited: list[float] = []
    every = (args.flood_clients + args.flood_slow) / args.flood_rate if args.flood_rate > 0 else 0.0
    limits = httpx.Limits(max_connections=args.flood_clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as pool:
        tasks = [_stranger(pool, path, i, every, sw, counts) for i in range(args.flood_clients)]
        tasks += [_slow_stranger(base, path, every, sw, counts, waited) for _ in range(args.flood_slow)]
        await asyncio.gather(*tasks)
    return {"counts": dict(counts), "slow_waited": waited}


def _flood_process(base: str, path: str, args: argparse.Namespace, events: tuple[Any, Any, Any], out: Any) -> None:
    """The flood in a process of its own (its client work does not slow the user's event loop), niced by
    ``--flood-nice``; ``events``: ready (set here once it can flood), flooding, stop."""
    os.nice(args.flood_nice)
    ready, flooding, stop = events
    ready.set()
    out.put(asyncio.run(_flood(base, path, args, _Switch(flooding, stop, args.flood_seconds))))


def _alternate(base: str, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds of the user's requests alone, then under the flood (the machine's other work weighs on
    both alike); the user's seconds and 503s of each, the flood's answers and seconds on."""
    ctx = multiprocessing.get_context("spawn")
    ready, flooding, stop, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    flood = ctx.Process(target=_flood_process, args=(base, path, args, (ready, flooding, stop), out), daemon=True)
    flood.start()
    if not ready.wait(120):
        raise SystemExit("FAILED: the flood's process did not start within 120 s")
    got: dict[str, Any] = {"alone": [], "under": [], "seconds on": 0.0}
    got |= {"busy alone": 0, "busy under": 0, "gave up alone": 0, "gave up under": 0}
    n = max(1, args.user_requests // args.rounds)
    try:
        for _ in range(args.rounds):
            _tally(got, "alone", asyncio.run(_user(base, path, n, args.user_patience)))
            flooding.set()
            t0 = time.perf_counter()
            time.sleep(args.flood_ramp)
            _tally(got, "under", asyncio.run(_user(base, path, n, args.user_patience)))
            flooding.clear()
            got["seconds on"] += time.perf_counter() - t0
            time.sleep(0.3)  # the strangers see the pause
    finally:
        stop.set()
    got.update(out.get(timeout=60))
    flood.join(30)
    return got


def _tally(got: dict[str, Any], phase: str, user: tuple[list[float], int, int]) -> None:
    got[phase] += user[0]
    got[f"busy {phase}"] += user[1]
    got[f"gave up {phase}"] += user[2]


def _flood_scenario(base: str, name: str, args: argparse.Namespace) -> bool:
    """The user alone and under the flood; prints the table; True if the user never got a 503 under it."""
    path = f"/api/studies/{name}"
    # warm-up: the first requests build the middleware stack and open the store
    asyncio.run(_user(base, path, 5, args.user_patience))
    got = _alternate(base, path, args)
    alone, under, counts, slow = got["alone"], got["under"], got["counts"], got["slow_waited"]
    sent = sum(counts.values())
    answers = ", ".join(f"{code}: {k}" for code, k in sorted(counts.items()))
    print(f"\n## an authenticated user (GET {path}, one at a time) alone and under an unauthenticated flood")
    columns = ("scenario", "user requests answered", "median ms", "p99 ms", "user 503s", "flood requests")
    print(f"| {' | '.join(columns)} | flood req/s | flood answers |\n{'|---' * (len(columns) + 2)}|")
    flooded = f"{sent} | {sent / got['seconds on']:.0f} | {answers}"
    for phase, times, flood in (("alone", alone, "- | - | -"), ("under the flood", under, flooded)):
        key = phase.split()[0]
        busy = f"{got[f'busy {key}']} ({got[f'gave up {key}']} gave up)"
        print(f"| {phase} | {len(times)} | {_ms(times, 50, 1)} | {_ms(times, 99, 1)} | {busy} | {flood} |")
    print(
        f"\n{args.rounds} rounds (alone, then flooded); flood: {args.flood_clients} clients and {args.flood_slow} "
        f"slow strangers at {args.flood_rate or 'as many as they can send'} requests/s in all, on for "
        f"{got['seconds on']:.1f} s; slow strangers answered in median {_ms(slow, 50, 1)} ms, p99 {_ms(slow, 99, 1)} ms"
    )
    return got["busy under"] == 0 == got["gave up under"]


# The load: readers and submissions while workers fill a study.


def _load_scenario(url: str, base: str, name: str, args: argparse.Namespace) -> bool:
    """Readers and submissions while 8 workers fill the study; prints the table; True if all went well."""
    fillers = _fillers(url, name, args.fillers)
    stop, claims = threading.Event(), list[int]()
    threads = _claimers(url, 4, stop, claims)
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    try:
        out = asyncio.run(_load(base, name, args))
    finally:
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while len(claims) < args.submissions and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for p in fillers:
            p.kill()
    once = len(claims) == len(set(claims)) == args.submissions
    candidates = StudyStore(url).count(StudyStore(url).study(name).id)
    print(f"\n## {args.readers} readers and {args.submissions} submissions while {args.fillers} workers fill a study")
    print("| request | n | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for kind in ("front figure", "live page"):
        print(f"| {kind} | {len(out[kind])} | {_ms(out[kind], 50)} | {_ms(out[kind], 99)} |")
    print(
        f"\nwall {wall:.1f} s, {args.readers} readers x {args.requests} requests, {len(out['503'])} answered 503 "
        f"(then retried), errors {len(out['errors'])}, submissions {len(out['submitted'])}/{args.submissions} "
        f"accepted, claimed exactly once: {once}, candidates written meanwhile: {candidates}"
    )
    print(json.dumps({"errors": len(out["errors"]), "first errors": out["errors"][:5], "claimed_once": once}))
    return not out["errors"] and once


_SMOKE = {
    "readers": 4,
    "requests": 2,
    "submissions": 2,
    "fillers": 2,
    "user_requests": 30,
    "flood_clients": 8,
    "flood_rate": 100.0,
    "flood_slow": 8,
    "flood_ramp": 0.2,
    "rounds": 2,
}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", help="a PostgreSQL URL (default: a new SQLite file)")
    parser.add_argument("--only", choices=("load", "flood"), help="run one scenario (default: both)")
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5, help="requests per reader")
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--fillers", type=int, default=8, help="workers filling the study during the load")
    parser.add_argument("--user-requests", type=int, default=400, help="the user's requests, alone and flooded")
    parser.add_argument("--flood-clients", type=int, default=64, help="the flood's connections")
    parser.add_argument("--flood-rate", type=float, default=200.0, help="flood requests/s in all (0: no limit)")
    parser.add_argument("--flood-slow", type=int, default=96, help="strangers sending a body that never ends")
    parser.add_argument("--flood-ramp", type=float, default=1.0, help="seconds of flood before the user starts")
    parser.add_argument(
        "--user-patience", type=float, default=10.0, help="seconds the user gives each request (503s waited out)"
    )
    parser.add_argument("--flood-nice", type=int, default=0, help="the flood process's niceness (10: it yields)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the user alone, then flooded")
    parser.add_argument("--flood-seconds", type=float, default=600.0, help="the flood stops after this at most")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, the same code paths (CI: seconds)")
    if "--smoke" in sys.argv[1:]:
        parser.set_defaults(**_SMOKE)  # flags given on the command line still win
    args = parser.parse_args()
    if min(args.readers, args.requests, args.user_requests, args.flood_clients, args.rounds) < 1 or args.flood_rate < 0:
        parser.error(
            "--readers, --requests, --user-requests, --flood-clients and --rounds must be >= 1, --flood-rate >= 0"
        )
    return args


def main() -> None:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        ok = _run(args, Path(tmp))
    if not ok:
        raise SystemExit("FAILED")


def _run(args: argparse.Namespace, tmp: Path) -> bool:
    """Serve a new store in ``tmp`` (or ``--pg``), run the scenarios, stop the server; True if all went well."""
    url = args.pg or f"sqlite:///{tmp}/service.db"
    name = f"load-{os.getpid()}"
    _study(url, name)
    server, base = _serve(url, tmp / "serve.log")
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, {'PostgreSQL' if args.pg else 'SQLite'}, {time.strftime('%F')}"
    )
    ok = True
    try:
        if args.only in (None, "flood"):
            ok = _flood_scenario(base, name, args) and ok
        if args.only in (None, "load"):
            ok = _load_scenario(url, base, name, args) and ok
    finally:
        alive = server.poll() is None
        server.terminate()
        server.wait(timeout=30)
        if not alive:
            print(f"prunetune serve stopped during the bench (exit {server.returncode}); its output:")
            print((tmp / "serve.log").read_text()[-3000:])
    return ok


if __name__ == "__main__":
    main()
