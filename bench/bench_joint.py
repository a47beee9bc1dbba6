"""Does searching ranks with ratios pay? Pruning-only vs joint (SVD, Tucker-2) at equal candidates.

    .venv/bin/python bench/bench_joint.py [--seeds 0,1] [--candidates 20]
    .venv/bin/python bench/bench_joint.py --smoke    # CI's size: one epoch, one seed, 3 candidates, rungs 2,4

The main job's study (digits ResNet-20, MACs capped at 50 %, floor 12.5 %,
rungs ``--rungs``) with ``space.rank = false`` and with ``space.rank = true``
(``space.method`` svd and tucker2), the same seeds and number of candidates.
Per run: the hypervolume of the front (validation accuracy against MACs as a
share of the base, reference point: accuracy 0 at the cap), the front's size,
the best validation accuracy within the cap and the seconds per
candidate. A larger hypervolume is a better curve.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import SMOKE_STUDY, machine, parse, print_table  # bench/, beside this script

from search import Search, load_config
from storage import best_within_cap


def hypervolume(points: list[tuple[float, float]], cap: float) -> float:
    """Area dominated by ``(macs share, accuracy)`` points (minimise MACs, maximise accuracy) up to the cap."""
    pts = sorted(points)
    area, best = 0.0, 0.0
    for i, (m, a) in enumerate(pts):
        best = max(best, a)
        right = pts[i + 1][0] if i + 1 < len(pts) else cap
        area += best * (right - m)
    return area


ARMS: dict[str, dict[str, Any]] = {
    "pruning only": {},
    "joint, svd": {"space.rank.method": "svd"},
    "joint, tucker2": {"space.rank.method": "tucker2"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--rungs", default="25,100")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="baseline epochs (cached under ./artifacts)")
    args = parse(ap, {"seeds": "0", "candidates": 3, "rungs": "2,4", "epochs": 1, "threads": 1})
    where = machine()
    with tempfile.TemporaryDirectory() as cache:  # the baseline's cache with --smoke (else ./artifacts)
        artifacts = str(Path(cache) / "artifacts") if args.smoke else "artifacts"
        rows = [_arm(args, arm, extra, artifacts) for arm, extra in ARMS.items()]
    print(
        f"\ndigits ResNet-20, MACs <= 50 %, floor 12.5 %, {args.candidates} candidates, rungs {args.rungs}; {where}\n"
    )
    header = ["space", "front hypervolume (per seed)", "front size", "best val acc within the cap %", "s per candidate"]
    print_table(header, rows)


def _arm(args: argparse.Namespace, arm: str, extra: dict[str, Any], artifacts: str) -> list[str]:
    """One space's studies, a seed each: the table's row (hypervolume, front size, best within the cap, speed)."""
    hv, size, cap_acc, per = [], [], [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as td:
            overrides = {
                "model.spec": "zoo:resnet20",
                "model.train_epochs": args.epochs,
                "data.spec": "digits",
                "budget.macs": "50%",
                "evaluate.rungs": [int(s) for s in args.rungs.split(",")],
                "search.floor": "12.5%",
                "evaluate.threads": args.threads,
                "search.study": f"joint-{seed}",
                "search.candidates": args.candidates,
                "search.seed": seed,
                "search.artifacts_dir": artifacts,
                "storage.url": f"sqlite:///{Path(td) / 'j.db'}",
                **(SMOKE_STUDY if args.smoke else {}),
                **extra,
            }
            s = Search(load_config(None, overrides)).prepare()
            t = time.perf_counter()
            res = s.run()
            per.append((time.perf_counter() - t) / args.candidates)
            base = s.prepared.base_cost.macs
            pts = [((r.macs or 0.0) / base, r.accuracy or 0.0) for r in res.front]
            hv.append(hypervolume(pts, 0.5))
            size.append(len(res.front))
            best = best_within_cap(res.front, s.cfg.evaluate.score)
            cap_acc.append(best.accuracy if best is not None and best.accuracy is not None else float("nan"))
    return [arm, f"{statistics.mean(hv):.4f} ({', '.join(f'{v:.4f}' for v in hv)})", f"{statistics.mean(size):.1f}",
            f"{100 * statistics.mean(cap_acc):.2f}", f"{statistics.mean(per):.1f}"]  # fmt: skip


if __name__ == "__main__":
    main()
