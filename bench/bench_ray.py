"""The Ray driver's throughput: real candidates on a two-node loopback cluster, and a 64-slot scale simulation.

    .venv/bin/python bench/bench_ray.py --pg postgresql+psycopg://USER@HOST:PORT/DB [--candidates 12] [--sleep 30]
    .venv/bin/python bench/bench_ray.py --smoke   # CI's size: 2 candidates of 3 steps, a 2-slot simulation;
                                                  # --pg defaults to $PRUNETUNE_TEST_POSTGRES_URL

The PostgreSQL server needs ``max_connections`` >= 3 W + 20 (each candidate process keeps about
three connections: the store, its heartbeat, Optuna's storage); ``scripts/postgres.sh`` starts one
with the default 100, enough for the real runs and W <= 26.

1. **Real evaluator** (digits ResNet-20 at 50% MACs, BN recalibration + ``--steps`` fine-tune
   steps, one thread per candidate): the local driver (one process) for reference, then
   ``--search.backend ray`` with W = 1 and 2 candidates at once on the cluster that
   ``scripts/ray_local.sh`` starts (head 127.0.0.2 and worker 127.0.0.3, one CPU each).
2. **Scale simulation**: one Ray node with ``--num-cpus 64`` (``PRUNETUNE_RAY_HEAD_CPUS=64``),
   ``ray.max_concurrent = W`` (64 unless the machine's memory holds fewer candidate processes:
   each imports torch) and the server's connections hold, an evaluator that sleeps ``--sleep``
   seconds (passed with ``Search(config, evaluator=...)``; one rung), the random sampler,
   ``4 W`` candidates. Checked: no plan twice, each candidate told to Optuna once, the stored
   front equal to a brute-force filter, and candidates/second after the first wave >= 0.85 W / sleep.

Columns: ``wall`` is ``Search.run`` (Tune start, actors, every candidate); ``cand/s`` is N / wall;
``steady`` is candidates per second after the first W finished (actors warm); ``busy`` is apply +
evaluate per candidate (in the trial); ``overhead`` = ``schedule`` + ``store``: ``schedule`` is how
long a warm slot waits between two candidates (its result reaching the driver, Tune, the driver's
sample + repair + reserve, the next trial starting), ``store`` the seconds spent in the store per
candidate (reserve, the row read, finish with the front); ``sample+repair`` is the driver's part.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _shared import parse, temp_dir  # bench/, beside this script

from evaluators import Context, Evaluator, Metrics
from search import Search, load_config
from spaces import Status

ROOT = Path(__file__).resolve().parents[1]
ACTOR_MB = 520  # memory of one candidate process, measured (torch 2.14 alone is ~280 MB private per process)

CONFIG = """
[model]
spec = "zoo:resnet20"
train_epochs = {epochs}
[data]
spec = "digits"
[budget]
macs = "50%"
[evaluate]
bn_batches = 2
finetune_steps = {steps}
eval_every = {every}
batch_size = 64
threads = 1
[search]
candidates = {n}
study = "{study}"
sampler = "{sampler}"
artifacts_dir = "{artifacts}"
backend = "{backend}"
[ray]
max_concurrent = {w}
max_failures = 1
[storage]
url = "{url}"
"""


class SleepEvaluator(Evaluator):
    """Sleeps ``seconds``; accuracy is a fixed function of the candidate's size (so there is a front)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def evaluate(self, model: Any, context: Context) -> Metrics:
        time.sleep(self.seconds)
        params = sum(p.numel() for p in model.parameters())
        accuracy = round(params / (params + 50_000.0), 6)
        return Metrics(accuracy=accuracy, status=Status.COMPLETE, history=[(1, accuracy)])


def free_port() -> int:
    """A TCP port nobody listens on now (the cluster's head; another cluster may hold Ray's default)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def cluster(command: str, workdir: Path, head_cpus: int, worker_cpus: int, port: int) -> dict[str, str]:
    """Start or stop ``scripts/ray_local.sh``'s loopback cluster in ``workdir``; the driver's environment."""
    env = dict(
        os.environ,
        PRUNETUNE_RAY_DIR=str(workdir),
        PRUNETUNE_RAY_HEAD_CPUS=str(head_cpus),
        PRUNETUNE_RAY_WORKER_CPUS=str(worker_cpus),
        PRUNETUNE_RAY_PORT=str(port),
    )
    out = subprocess.run(["bash", str(ROOT / "scripts/ray_local.sh"), command], env=env, check=True, text=True,
                         capture_output=True, timeout=300)  # fmt: skip
    exports = {}
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exports[key] = value
    return exports


def run(cfg_text: str, tmp: Path, evaluator: Evaluator | None = None) -> dict[str, Any]:
    path = tmp / f"{uuid.uuid4().hex[:8]}.toml"
    path.write_text(cfg_text)
    cfg = load_config(path)
    search = Search(cfg, evaluator=evaluator).prepare()
    finished: list[float] = []
    t0 = time.perf_counter()
    res = search.run(lambda r: finished.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    p = search.prepared
    rows = p.store.candidates(p.study_id)
    n, w = len(rows), cfg.ray.max_concurrent or 1
    t = res.timings
    done = max(t.candidates, 1)
    steady = (len(finished) - w) / (finished[-1] - finished[w - 1]) if len(finished) > w + 1 else float("nan")
    busy = (t.apply + t.evaluate) / done
    return {
        "rows": rows,
        "store": p.store,
        "study": p.study,
        "url": cfg.storage.url,
        "n": n,
        "w": w,
        "wall": wall,
        "rate": n / wall,
        "steady": steady,
        "busy": busy,
        "overhead": t.per_candidate().get("schedule", 0.0) + t.store / done,
        "schedule_s": t.per_candidate().get("schedule", 0.0),
        "store_s": t.store / done,
        "sample_s": (t.sample + t.repair) / done,
        "events": res.events,
    }


def check(r: dict[str, Any]) -> str:
    """No plan twice, each candidate told once, the front exact: '' when all hold."""
    import optuna

    rows = r["rows"]
    problems = []
    if len({x.plan_hash for x in rows}) != len(rows):
        problems.append("duplicate plans")
    if any(x.status is Status.RUNNING for x in rows):
        problems.append("RUNNING candidates left")
    trials = optuna.load_study(study_name=r["study"], storage=r["url"]).get_trials()
    told = Counter(
        t.user_attrs.get("plan_hash")
        for t in trials
        if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs
    )
    if any(told[x.plan_hash] != 1 for x in rows if x.status is Status.COMPLETE):
        problems.append("a candidate told to Optuna twice")
    done = [(x.id, (-(x.accuracy or 0.0), x.macs or 0.0)) for x in rows if x.status is Status.COMPLETE]
    brute = {i for i, a in done if not any(all(u <= v for u, v in zip(b, a, strict=True)) and b != a for _, b in done)}
    sid = r["store"].study(r["study"]).id
    if {x.id for x in r["store"].front(sid)} != brute:
        problems.append("front differs from the brute-force filter")
    return ", ".join(problems)


def max_connections(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return int(con.execute(text("SHOW max_connections")).scalar_one())
    finally:
        engine.dispose()


def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def row(name: str, r: dict[str, Any], ok: str = "") -> str:
    return (
        f"| {name} | {r['w']} | {r['n']} | {r['wall']:.1f} | {r['rate']:.3f} | {r['steady']:.3f} | {r['busy']:.2f} "
        f"| {r['overhead']:.3f} | {r['schedule_s']:.3f} | {r['store_s']:.3f} | {r['sample_s']:.3f} |{ok}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default=os.environ.get("PRUNETUNE_TEST_POSTGRES_URL"), help="PostgreSQL URL")
    ap.add_argument("--candidates", type=int, default=12, help="real candidates per run")
    ap.add_argument("--steps", type=int, default=60, help="fine-tune steps of a real candidate")
    ap.add_argument("--sleep", type=float, default=30.0, help="seconds the scale simulation's evaluator sleeps")
    ap.add_argument("--scale-workers", type=int, default=64, help="candidates at once in the scale simulation")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--epochs", type=int, default=8, help="the digits baseline's epochs")
    args = parse(ap, {"candidates": 2, "steps": 3, "sleep": 0.5, "scale_workers": 2, "epochs": 1})
    if not args.pg:
        ap.error('--pg: a PostgreSQL URL is required (eval "$(bash scripts/postgres.sh start)" exports one)')
    import ray

    tag = uuid.uuid4().hex[:6]
    tmp = temp_dir()
    art = tmp / "artifacts"
    base = {
        "steps": args.steps,
        "every": args.steps // 3,
        "artifacts": art,
        "url": args.pg,
        "sampler": "tpe",
        "epochs": args.epochs,
    }
    lines = [
        "| run | W | N | wall s | cand/s | steady cand/s | busy s/cand | overhead s/cand | schedule s/cand "
        "| store s/cand | sample+repair s/cand | checks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not args.skip_real:
        n = args.candidates
        local = run(CONFIG.format(n=n, w=1, study=f"bl-{tag}", backend="local", **base), tmp)
        lines.append(row("local driver (1 process)", local, f" {check(local) or 'ok'} |"))
        print(lines[-1], flush=True)
        port = free_port()
        exports = cluster("start", Path(f"/tmp/bray-{tag}"), 1, 1, port)
        os.environ.update(exports)
        try:
            for w in (1, 2):
                r = run(CONFIG.format(n=n, w=w, study=f"br{w}-{tag}", backend="ray", **base), tmp)
                bad = check(r)
                lines.append(row("ray, 2 nodes x 1 CPU", r, f" {bad or 'ok'} |"))
                print(lines[-1], flush=True)
        finally:
            ray.shutdown()
            cluster("stop", Path(f"/tmp/bray-{tag}"), 1, 1, port)
    w = args.scale_workers
    notes = []
    fits = max(1, (mem_available_mb() - 6144) // ACTOR_MB)  # 6 GB left to everything else
    if fits < w:
        notes.append(f"W={w} needs ~{w * ACTOR_MB / 1024:.0f} GB for its candidate processes (~{ACTOR_MB} MB each), "
                     f"this machine has {mem_available_mb() / 1024:.1f} GB available: W={fits}")  # fmt: skip
        w = fits
    conns = max_connections(args.pg)
    if 3 * w + 20 > conns:
        notes.append(f"PostgreSQL max_connections={conns} holds W={(conns - 20) // 3} (3 per candidate process)")
        w = max(1, (conns - 20) // 3)
    port = free_port()
    exports = cluster("start", Path(f"/tmp/bray-{tag}"), 64, 0, port)
    os.environ.update(exports)
    try:
        scale = {**base, "sampler": "random"}
        cfg = CONFIG.format(n=4 * w, w=w, study=f"bs{w}-{tag}", backend="ray", **scale)
        r = run(cfg, tmp, SleepEvaluator(args.sleep))
        bad = check(r)
        target = 0.85 * w / args.sleep
        verdict = "PASS" if r["steady"] >= target and not bad else "FAIL"
        lines.append(row(f"scale: 1 node, 64 CPUs, sleep {args.sleep:g}s", r, f" {bad or 'ok'} |"))
    finally:
        ray.shutdown()
        cluster("stop", Path(f"/tmp/bray-{tag}"), 64, 0, port)
    print(f"bench_ray ({platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, PostgreSQL)")
    print("\n".join(lines))
    for note in notes:
        print(note)
    print(f"scale: steady {r['steady']:.2f} cand/s vs 0.85 W / sleep = {target:.2f}: {verdict}; "
          f"{len(r['rows'])} candidates, {len({x.plan_hash for x in r['rows']})} plans")  # fmt: skip


if __name__ == "__main__":
    main()
