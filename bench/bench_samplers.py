"""Which sampler should a study use? Hypervolume of the validation front and the best within the cap, by candidates.

    .venv/bin/python bench/bench_samplers.py                 # Fashion-MNIST, 15 % and 50 %, seeds 0,1,2
    .venv/bin/python bench/bench_samplers.py --data digits --epochs 30 --samplers tpe,evolve
    .venv/bin/python bench/bench_samplers.py --smoke         # CI's size: digits, one epoch, 50 %, 3 candidates

The ResNet-20 of ``bench_search.py`` (trained on the train split, cached).
For each MAC budget, seed and sampler (``--samplers``: the registry's names), one
study of ``--candidates`` candidates with the defaults (the seed plans first, the
default floor: a curve over the cost range), the same rungs and re-scoring as
``bench_search.py``. Two measures, both on validation (what a study selects on;
the test split is ``bench_search.py``'s):

* **hypervolume** of the rung-0 front (every candidate reaches rung 0: the values
  the sampler is told), in the plane (MACs as a fraction of the cap, validation
  accuracy), against the reference point (the cap, accuracy 0), in points ×
  cap: the larger, the better the whole curve;
* **the best within the cap** among the first 10, 20 and 30 candidates (in the
  order they were created, whatever their status): the best validation
  accuracy at the top rung (:func:`top_rung_best`; the re-scoring rung, which
  only the full study runs, left out so that every count is judged alike), and
  the full study's pick (:func:`storage.best_within_cap`, after its re-scoring
  rung).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import SMOKE, add_search_args, machine, parse_search_args, parser, print_table, study_overrides

from search import SAMPLERS, Search, load_config
from storage import CandidateRow, best_within_cap

CHECKPOINTS = (10, 20, 30)


def hypervolume(points: list[tuple[float, float]]) -> float:
    """The area dominated by ``(cost, accuracy)`` points (cost minimized, accuracy maximized) within the box
    from the reference ``(1, 0)``: a 2-D sweep (points above cost 1 count for nothing)."""
    area, best = 0.0, 0.0
    for cost, acc in sorted((c, a) for c, a in points if c <= 1.0):  # cheapest first
        if acc > best:
            area += (1.0 - cost) * (acc - best)
            best = acc
    return area


def _rung0(rows: list[CandidateRow], steps: int, cap_macs: float) -> list[tuple[float, float]]:
    """Every candidate's (MACs / cap, validation accuracy at rung 0): what the sampler is told."""
    return [(r.macs / cap_macs, r.accuracy_after(steps) or 0.0) for r in rows if r.macs and r.accuracy_after(steps)]


def top_rung_best(rows: list[CandidateRow], top: int) -> float | None:
    """The best validation accuracy after ``top`` fine-tune steps (the top rung) among ``rows``."""
    scores = [a for r in rows if (a := r.accuracy_after(top)) is not None]
    return max(scores, default=None)


def _study(args: argparse.Namespace, tmp: Path, budget: float, seed: int, sampler: str) -> Search:
    overrides = {
        **study_overrides(args, tmp, f"{sampler}-{budget}-{seed}"),
        "budget.macs": f"{budget:.0%}",
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
        "evaluate.rescore_top": args.rescore_top,
        "search.candidates": args.candidates,
        "search.sampler": sampler,
        "search.seed": seed,
    }
    return Search(load_config(None, overrides)).prepare()


def run_one(args: argparse.Namespace, budget: float, seed: int, sampler: str, log: dict[str, Any]) -> None:
    """One study; appends its hypervolume, its picks at the checkpoints and its wall time to ``log``."""
    with tempfile.TemporaryDirectory() as td:
        t = time.perf_counter()
        s = _study(args, Path(td), budget, seed, sampler)
        s.run()
        p = s.prepared
        rows = sorted(p.store.candidates(p.study_id), key=lambda r: r.id)  # in the order they were created
        cap = budget * p.base_cost.macs
        entry = log.setdefault(sampler, {"hv": [], "best": {n: [] for n in CHECKPOINTS}, "final": [], "wall": []})
        entry["hv"].append(100 * hypervolume(_rung0(rows, args.rungs[0], cap)))
        for n in CHECKPOINTS:
            best = top_rung_best(rows[:n], args.rungs[-1]) if len(rows) >= n else None
            if best is not None:
                entry["best"][n].append(100 * best)
        done = [r for r in rows if r.status == "COMPLETE"]
        final = best_within_cap(done, p.config.evaluate.score)  # the study's pick, after the re-scoring rung
        entry["final"].append(100 * ((final.accuracy or 0.0) if final else 0.0))
        entry["wall"].append(time.perf_counter() - t)
    picks = ", ".join(f"@{n} {v[-1]:.2f}" for n, v in entry["best"].items() if v)
    print(f"budget {budget:.0%} seed {seed} {sampler}: hypervolume {entry['hv'][-1]:.2f}; best {picks}", flush=True)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    ap = parser(__doc__, budgets="0.15,0.5")
    add_search_args(ap)
    ap.add_argument("--samplers", default="tpe,nsga2,gp,evolve,random", help="the registry's names to compare")
    args, seeds = parse_search_args(ap, {**SMOKE, "budgets": "0.5", "samplers": "tpe,evolve"})
    samplers = args.samplers.split(",")
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        ap.error(f"unknown sampler {unknown[0]!r}; choose from {', '.join(SAMPLERS.names())}")
    rows, t_all = [], time.perf_counter()
    for budget in [float(b) for b in args.budgets.split(",")]:
        log: dict[str, Any] = {}
        for seed in seeds:
            for sampler in samplers:
                run_one(args, budget, seed, sampler, log)
        for sampler, e in log.items():
            best = [_mean_sd(e["best"][n]) for n in CHECKPOINTS]
            wall = f"{statistics.mean(e['wall']):.0f}"
            rows.append([f"{budget:.0%}", sampler, _mean_sd(e["hv"]), *best, _mean_sd(e["final"]), wall])
    print(
        f"\n# {args.data} ResNet-20; studies of {args.candidates} candidates, rungs {args.rungs}, the best "
        f"{args.rescore_top} re-scored; seeds {seeds}; validation (mean ± std); {machine()}; "
        f"{time.perf_counter() - t_all:.0f} s\n"
    )
    header = ["MAC budget", "sampler", "hypervolume (rung 0)"]
    picks = [f"best at the top rung @ {n}" for n in CHECKPOINTS]
    print_table([*header, *picks, f"the pick of all {args.candidates} (re-scored)", "s per study"], rows)


if __name__ == "__main__":
    main()
