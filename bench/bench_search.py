"""The benchmark that decides: the search against the baselines, every model finalized the same way.

    .venv/bin/python bench/bench_search.py                       # Fashion-MNIST, 50/30/15 %, seeds 0,1,2
    .venv/bin/python bench/bench_search.py --data digits --epochs 30

One ResNet-20 is trained on the **train** split (cached). For each MAC budget
and seed, five compressed models get exactly the same final treatment —
:func:`search.train_final`: BN recalibration, ``--final-steps`` fine-tune steps
distilled from the original (weight ``evaluate.final_kd_weight``), the seed's
data order — and are measured on the **test** split, which nothing selects on:

(a) **uniform L1**: one prune ratio for every group, largest-L1 channels kept
    (``space.fit`` of the empty plan onto the budget);
(b) **torch-pruning global magnitude**: ``tp.pruner.MagnitudePruner`` with
    ``global_pruning=True``, its ratio bisected until the measured MACs meet the budget;
(c) **allocator**: ``space.allocate`` (pruning only, valued by the measured sensitivity the
    studies' allocator seed uses), repaired with ``fit``;
(d) **random search, best of N**: a ``prunetune`` study with the random sampler and
    no seed plans;
(e) **the search, best of N**: a ``prunetune`` study with the defaults (TPE, the
    allocator's, the uniform and the global-ranking plan first).

Both studies use ``search.floor = "cap"`` (the question is the best model at the
budget) and the same successive-halving rungs (``--rungs``: fine-tune steps,
the best third promoted; lower rungs score on ``--max-val`` validation images,
the top rung on the whole validation split). "Best of N" is the most accurate
candidate on validation at the highest rung reached. The second table gives,
per sampler, how many candidates it needed to come within 0.3 points (of
validation accuracy) of its final best. ``--curve`` also runs the default
study (floor a quarter of the cap) to measure what spreading the candidates
over the cost range costs at the cap.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _shared import parser, print_table, study_overrides, torch_pruning_at  # bench/, beside this script

from search import Search, load_config
from search.drivers._prepare import allocator_sensitivity
from search.operations._finalize import train_final
from spaces import Budget, Plan, Status, measure_cost
from storage import CandidateRow


def best_of(rows: list[CandidateRow]) -> CandidateRow:
    """The most accurate candidate on validation at the highest rung any reached (cheaper on ties)."""
    done = [r for r in rows if r.status is Status.COMPLETE and r.accuracy is not None]
    top = max(r.top_rung for r in done)
    return max((r for r in done if r.top_rung == top), key=lambda r: (r.accuracy or 0.0, -(r.macs or 0.0)))


def to_within(rows: list[CandidateRow], points: float = 0.003) -> int:
    """Candidates (in the order they were created) until the best so far is within ``points`` of the final best."""
    done = sorted((r for r in rows if r.status is Status.COMPLETE and r.accuracy is not None), key=lambda r: r.id)
    top = max(r.top_rung for r in done)
    final = max(r.accuracy or 0.0 for r in done if r.top_rung == top)
    best = 0.0
    for i, r in enumerate(done, 1):
        if r.top_rung == top:
            best = max(best, r.accuracy or 0.0)
        if best >= final - points:
            return i
    return len(done)


def study(args: argparse.Namespace, tmp: Path, budget: float, seed: int, arm: str) -> Search:
    floor = "cap" if arm != "curve" else None
    overrides = {
        **study_overrides(args, tmp, f"{arm}-{budget}-{seed}"),
        "budget.macs": f"{budget:.0%}",
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
        "search.candidates": args.candidates,
        "search.seed": seed,
        "search.sampler": "random" if arm == "random" else "tpe",
        "search.seed_plans": [] if arm == "random" else ["allocator", "uniform", "global"],
    }
    if floor is not None:
        overrides["search.floor"] = floor
    return Search(load_config(None, overrides)).prepare()


def main() -> None:
    ap = parser(__doc__, budgets="0.5,0.3,0.15")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--rungs", default="20,80", help="fine-tune steps per rung of the searches")
    ap.add_argument("--max-val", type=int, default=1000, help="validation images below the top rung")
    ap.add_argument("--curve", action="store_true", help="also the default floor, to price the curve at the cap")
    ap.add_argument("--searches", default="random,search", help="which studies to run (random, search)")
    args = ap.parse_args()
    args.rungs = [int(s) for s in args.rungs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, CPU"
    rows: list[list[str]] = []
    speed: list[list[str]] = []
    t_all = time.perf_counter()
    for b in [float(x) for x in args.budgets.split(",")]:
        accs: dict[str, list[float]] = {}
        cost: dict[str, list[float]] = {}
        within: dict[str, list[int]] = {"random": [], "search": [], "curve": []}
        walls: dict[str, float] = {}
        for seed in seeds:
            with tempfile.TemporaryDirectory() as td:
                tmp = Path(td)
                runs = {}
                for arm in (*args.searches.split(","), *(["curve"] if args.curve else [])):
                    t = time.perf_counter()
                    s = study(args, tmp, b, seed, arm)
                    s.run()
                    walls[arm] = walls.get(arm, 0.0) + time.perf_counter() - t
                    runs[arm] = s
                p = next(iter(runs.values())).prepared
                if seed == seeds[0] and b == float(args.budgets.split(",")[0]):
                    print(f"# {args.data}: ResNet-20 baseline {p.base_accuracy:.4f} on validation; {where}", flush=True)
                space, example = p.space, p.data.example_inputs(1)
                sens = allocator_sensitivity(p)  # what the studies' allocator seeds are valued by
                budget = Budget(macs=f"{b:.0%}")
                limit = budget.absolute(p.base_cost)["macs"]
                models = {
                    "(a) uniform L1": space.apply(space.fit(space.uniform_plan(0.0), budget)),
                    "(b) torch-pruning global magnitude": torch_pruning_at(
                        p.base_model, example, limit, global_pruning=True
                    ),
                    "(c) allocator": space.apply(
                        space.fit(space.allocate(budget, rank=False, sensitivity=sens).plan, budget)
                    ),
                }
                for arm, name in (("random", "(d) random search"), ("search", "(e) search"), ("curve", "(e') curve")):
                    if arm in runs:
                        rs = runs[arm].prepared
                        cands = rs.store.candidates(rs.study_id)
                        models[f"{name}, best of {args.candidates}"] = space.apply(Plan.from_json(best_of(cands).plan))
                        if arm in within:
                            within[arm].append(to_within(cands))
                for name, m in models.items():
                    _, test = train_final(p, m.to(p.device), steps=args.final_steps, seed=seed)
                    accs.setdefault(name, []).append(float(test or 0.0))
                    cost.setdefault(name, []).append(measure_cost(m.cpu(), example).macs / p.base_cost.macs)
                line = ", ".join(f"{k} {v[-1]:.4f} ({100 * cost[k][-1]:.1f}% MACs)" for k, v in accs.items())
                reach = ", ".join(f"{k} {v[-1]}" for k, v in within.items() if v)
                print(f"budget {b:.0%} seed {seed}: {line}; to within 0.3: {reach}; {walls}", flush=True)
        better = max(
            statistics.mean(accs["(a) uniform L1"]), statistics.mean(accs["(b) torch-pruning global magnitude"])
        )
        for name, vals in accs.items():
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            gain = 100 * (statistics.mean(vals) - better)
            rows.append(
                [f"{b:.0%}", name, f"{100 * statistics.mean(cost[name]):.1f}%",
                 f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}", f"{gain:+.2f}"]
            )  # fmt: skip
        for arm, n in within.items():
            if n:
                speed.append([f"{b:.0%}", arm, ", ".join(map(str, n)), f"{walls[arm] / len(seeds):.0f}"])
    print(
        f"\ntest accuracy after BN recalibration + {args.final_steps} distilled fine-tune steps, seeds {seeds} "
        f"(mean ± std, %); searches: {args.candidates} candidates, rungs {args.rungs}, "
        f"{args.max_val} validation images below the top rung; {where}; {time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["MAC budget", "method", "MACs", "test accuracy", "vs better of (a), (b)"], rows)
    print()
    print_table(
        ["MAC budget", "sampler", "candidates to within 0.3 points of its best (per seed)", "s per search"], speed
    )


if __name__ == "__main__":
    main()
