"""64 workers on one PostgreSQL study: the store's control path at scale, without torch.

    .venv/bin/python bench/bench_scale.py --pg postgresql+psycopg://USER@HOST:PORT/DB \
        [--workers 64] [--candidates 320] [--eval 0.5] [--kill 6]
    .venv/bin/python bench/bench_scale.py --smoke   # CI's size: 4 workers, 16 candidates, one killed;
                                                    # --pg defaults to $PRUNETUNE_TEST_POSTGRES_URL

Each worker is a fresh Python process that imports only the study's control path:
``storage.StudyStore`` (reserve, claim, heartbeat, finish with the Pareto update) and the worker
identity, liveness test and heartbeat thread of ``search.study._candidate``; it checks that
torch, numpy and Optuna were never imported. A worker reserves random plans from a shared pool
(twice the study's size, so the store refuses duplicates often), renews the candidate's
heartbeat while it "evaluates" (sleeps ``--eval`` seconds), then finishes it COMPLETE with a
made-up accuracy and cost, which rewrites the study's front in the same transaction. ``--kill``
workers are SIGKILLed mid-candidate; the survivors claim what they left (``claim_stale``).

Measured: candidates per second, duplicate plans stored (must be 0), candidates lost (still
RUNNING, or missing, at the end: must be 0), duplicates the store refused, candidates claimed
from killed workers, the most PostgreSQL connections open at once (``pg_stat_activity``, sampled
every 0.2 s) and the workers' peak memory. The server needs ``max_connections`` >= 2 W + 10 (a
worker holds one connection for its work and one for its heartbeat); ``scripts/postgres.sh``
takes ``PRUNETUNE_PG_OPTS="-c max_connections=200"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from _shared import parse  # bench/, beside this script
from sqlalchemy import create_engine, text

from storage import StudyStore

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, random, resource, sys, time
from search.study._candidate import _Heartbeat, is_dead, worker_id
from storage import StudyFullError, StudyStore

url, name, target, pool, seed, seconds = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), float(sys.argv[6])
store = StudyStore(url)
sid, me, rng = store.study(name).id, worker_id(), random.Random(seed)
out = {"evaluated": 0, "refused": 0, "claimed": 0}

def live(cid):
    with _Heartbeat(store, cid, 0.25):
        time.sleep(seconds)
    acc, macs = rng.random(), rng.randrange(1, 1000)
    store.finish(cid, "COMPLETE", accuracy=acc, cost={"macs": macs, "params": macs, "bytes": 4 * macs}, seconds=seconds)
    out["evaluated"] += 1

full = False
while True:
    for row in store.claim_stale(sid, me, grace_seconds=30, is_dead=is_dead):
        out["claimed"] += 1
        live(row.id)
    if full:
        if store.count(sid, "RUNNING") == 0:
            break
        time.sleep(0.2)
        continue
    k = rng.randrange(pool)
    try:
        plan = json.dumps({"format": 1, "prune": {"g": k / pool}})
        cid = store.reserve(sid, plan, f"plan-{k}", worker=me, limit=target)
    except StudyFullError:
        full = True
        continue
    if cid is None:
        out["refused"] += 1
        continue
    live(cid)
out["heavy"] = sorted(m for m in ("torch", "numpy", "optuna") if m in sys.modules)
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _connections(url: str, stop: threading.Event, peak: list[int]) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")  # a fresh statistics snapshot per query
    with engine.connect() as con:
        while not stop.wait(0.2):
            n = con.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).scalar()
            peak[0] = max(peak[0], int(n or 0))
    engine.dispose()


def _study(url: str) -> str:
    name = f"scale-{uuid.uuid4().hex[:8]}"
    StudyStore(url).ensure_study(
        name,
        model_spec="bench:none",
        data_spec="bench:none",
        budget={"macs": "50%"},
        space_options={},
        base_cost={"macs": 1000, "params": 1000, "bytes": 4000},
    )
    return name


def _spawn(args: argparse.Namespace, name: str, i: int) -> subprocess.Popen[str]:
    argv = [args.pg, name, str(args.candidates), str(2 * args.candidates), str(i), str(args.eval)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    name = _study(args.pg)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_connections, args=(args.pg, stop, peak), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    procs = [_spawn(args, name, i) for i in range(args.workers)]
    store = StudyStore(args.pg)
    sid = store.study(name).id
    while store.count(sid) < args.candidates // 4:  # a quarter in: kill some workers mid-candidate
        time.sleep(0.05)
    for p in procs[: args.kill]:
        p.send_signal(signal.SIGKILL)
    outs = [json.loads(p.communicate()[0] or "{}") for p in procs]
    wall = time.perf_counter() - t0
    stop.set()
    rows = store.candidates(sid)
    alive = [o for o in outs if o]
    assert all(o["heavy"] == [] for o in alive), "a control-path worker imported torch, numpy or Optuna"
    return {
        "workers": args.workers,
        "killed": args.kill,
        "candidates": len(rows),
        "wall s": round(wall, 1),
        "cand/s": round(len(rows) / wall, 2),
        "ideal cand/s": round(args.workers / args.eval, 1),
        "duplicates stored": len(rows) - len({r.plan_hash for r in rows}),
        "lost": sum(r.status != "COMPLETE" for r in rows) + max(0, args.candidates - len(rows)),
        "refused dups": sum(o["refused"] for o in alive),
        "claimed": sum(o["claimed"] for o in alive),
        "front": len(store.front(sid)),
        "peak PG conns": peak[0],
        "worker MB": round(max(o["max_rss_mb"] for o in alive)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg",
        default=os.environ.get("PRUNETUNE_TEST_POSTGRES_URL"),
        help="a PostgreSQL URL (max_connections >= 2 W + 10; default: $PRUNETUNE_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=320)
    parser.add_argument("--eval", type=float, default=0.5, help="seconds one simulated evaluation takes")
    parser.add_argument("--kill", type=int, default=6, help="workers SIGKILLed mid-candidate")
    args = parse(parser, {"workers": 4, "candidates": 16, "eval": 0.05, "kill": 1})
    if not args.pg:
        parser.error('--pg: a PostgreSQL URL is required (eval "$(bash scripts/postgres.sh start)" exports one)')
    row = run(args)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%F')}")
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if row["duplicates stored"] or row["lost"]:
        raise SystemExit("FAILED: duplicates or lost candidates")


if __name__ == "__main__":
    main()
