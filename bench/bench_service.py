"""The service under load: 200 concurrent readers and 20 submissions while a study is being filled.

    .venv/bin/python bench/bench_service.py [--pg URL] [--readers 200] [--requests 5] [--submissions 20]

A real ``prunetune serve`` (uvicorn, on a free loopback port, default admission limits: 8
requests in at once, 64 waiting) serves a store in which 8 torch-free workers
(``bench/bench_scale.py``'s control path) fill one study while the readers read it. Each
reader (an asyncio task with its own connection) asks ``--requests`` times, alternately, for
the study's front figure (``/api/studies/{name}/figures/front``, what the live page polls) and
the live page itself (``/studies/{name}``); a 503 is waited out for its ``Retry-After`` and
asked again. Meanwhile 20 studies are submitted (``POST /api/studies``) and 4 claimers take
them from the queue concurrently (``Submissions.claim``, what ``prunetune worker`` calls; they
finish each at once instead of running it, so the bench measures the queue, not training).

Measured: p50 / p99 latency per kind of request (successful ones, retries included), errors
(anything but 200 / 202 / 503: must be 0), 503s answered, and whether every submission was
claimed exactly once. Every request goes to 127.0.0.1; the bench stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def _serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "PRUNETUNE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "search.cli", "serve", "--storage", url, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return (
        f"{1000 * statistics.quantiles(values, n=100)[int(q) - 1]:.0f}"
        if len(values) > 1
        else f"{1000 * values[0]:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", help="a PostgreSQL URL (default: a new SQLite file)")
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5, help="requests per reader")
    parser.add_argument("--submissions", type=int, default=20)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-service-")
    url = args.pg or f"sqlite:///{tmp}/service.db"
    name = f"load-{os.getpid()}"
    _study(url, name)
    server, base = _serve(url)
    fillers = _fillers(url, name, 8)
    stop, claims = threading.Event(), []
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
        server.terminate()
        server.wait(timeout=30)
    once = len(claims) == len(set(claims)) == args.submissions
    candidates = StudyStore(url).count(StudyStore(url).study(name).id)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, {'PostgreSQL' if args.pg else 'SQLite'}, {time.strftime('%F')}"
    )
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
    if out["errors"] or not once:
        raise SystemExit("FAILED")


if __name__ == "__main__":
    main()
