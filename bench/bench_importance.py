"""Which channels to keep, and which one-shot plan to start from, against torch-pruning's own uniform pruner.

    .venv/bin/python bench/bench_importance.py                  # Fashion-MNIST, 50/30/15 %, seeds 0,1,2
    .venv/bin/python bench/bench_importance.py --budgets 0.15 --seeds 0 --final-steps 100   # a quick look
    .venv/bin/python bench/bench_importance.py --smoke          # CI's size: digits, one epoch, 50 %, 5 steps

One ResNet-20 is trained on the Fashion-MNIST **train** split (cached, as
``bench_search.py`` does). For each MAC budget, PruneTune's uniform plan (one
prune ratio for every group) is moved onto the budget by ``space.fit``; the
same plan is then built with each criterion, so the arms differ only in
*which* channels they keep, not in how many. torch-pruning's
``MagnitudePruner`` with its group L1 importance (``global_pruning=False``,
its ratio bisected until the measured MACs meet the budget: it floors kept
counts, so it lands a little below) is the library's one line. Every model
gets exactly the same treatment, :func:`search.train_final`: BN
recalibration, ``--final-steps`` fine-tune steps distilled from the original,
the seed's data order; and is measured on the **test** split, which nothing
selects on. ``lamp`` keeps the same channels as ``group_l2`` within a group
(it only rescales for global ranking), so it is not a separate arm here.

The second table, the one-shot plans a study evaluates first (its seed
plans), with ``--criterion`` choosing their channels, under the same recipe:
the uniform plan, the global-ranking plan (``space.global_plan``), and the
allocator's plan valued by importance shares and by measured sensitivity
(``search.allocator``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _shared import (  # bench/, beside this script
    SMOKE,
    machine,
    parse,
    parser,
    print_table,
    study_overrides,
    temp_dir,
    torch_pruning_at,
)
from torch import nn

from search import Search, load_config
from search.operations._finalize import train_final
from search.preparation._prepare import Prepared, _calibration_batches, allocator_sensitivity
from spaces import Budget, Importance, measure_cost

CRITERIA = ("l1", "bn_scale", "group_l1", "group_l2", "taylor", "hessian")
LIBRARY = "torch-pruning uniform (group L1)"


def prepared(args: argparse.Namespace, tmp: Path) -> Prepared:
    overrides = {**study_overrides(args, tmp, "importance"), "space.importance": args.criterion}
    return Search(load_config(None, overrides)).prepare().prepared


def models_at(p: Prepared, budget: float) -> dict[str, nn.Module]:
    """The arms at one MAC budget: the fitted uniform plan under each criterion, and torch-pruning's."""
    space, example = p.space, p.data.example_inputs(1)
    b = Budget(macs=f"{budget:.0%}")
    plan = space.fit(space.uniform_plan(0.0), b)
    out: dict[str, nn.Module] = {}
    for crit in CRITERIA:
        out[crit] = space.apply(plan.replace(importance=crit))
    out[LIBRARY] = torch_pruning_at(p.base_model, example, b.absolute(p.base_cost)["macs"], global_pruning=False)
    return out


def seeds_at(p: Prepared, budget: float) -> dict[str, nn.Module]:
    """The seed plans at one MAC budget other than the uniform one (a criterion arm already), their channels
    chosen by the space's criterion (``--criterion``)."""
    space, b = p.space, Budget(macs=f"{budget:.0%}")
    measured = allocator_sensitivity(p)
    plans = {
        "global ranking": space.global_plan(b),
        "allocator (importance)": space.fit(space.allocate(b, rank=False).plan, b),
        "allocator (sensitivity)": space.fit(space.allocate(b, rank=False, sensitivity=measured).plan, b),
    }
    return {name: space.apply(plan) for name, plan in plans.items()}


def finals(p: Prepared, models: dict[str, nn.Module], budget: float, seeds: list[int], steps: int) -> dict[str, list]:
    """Every model finalized with each seed: its test accuracies."""
    accs: dict[str, list[float]] = {name: [] for name in models}
    for seed in seeds:
        for name, m in models.items():
            _, test = train_final(p, copy.deepcopy(m).to(p.device), steps=steps, seed=seed)
            accs[name].append(float(test or 0.0))
        print(f"budget {budget:.0%} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accs.items()), flush=True)
    return accs


def rows_of(p: Prepared, models: dict[str, nn.Module], accs: dict[str, list], budget: float) -> list[list[str]]:
    """README rows: MACs, test accuracy (mean ± std over seeds), difference to torch-pruning uniform."""
    example = p.data.example_inputs(1)
    ref = statistics.mean(accs[LIBRARY])
    rows = []
    for name, m in models.items():
        vals = accs[name]
        macs = measure_cost(m, example).macs / p.base_cost.macs
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(
            [f"{budget:.0%}", name, f"{100 * macs:.1f}%", f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}",
             f"{100 * (statistics.mean(vals) - ref):+.2f}"]
        )  # fmt: skip
    return rows


def main() -> None:
    ap = parser(__doc__, budgets="0.5,0.3,0.15")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samples", type=int, default=256, help="calibration images of taylor and hessian")
    ap.add_argument("--criterion", default="group_l1", help="the criterion of the one-shot plans' channels")
    ap.add_argument("--skip-seeds", action="store_true", help="only the criteria, not the other one-shot plans")
    args = parse(ap, {**SMOKE, "budgets": "0.5", "samples": 32})
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    where = machine()
    t_all = time.perf_counter()
    tmp = temp_dir()
    p = prepared(args, tmp)
    for crit in CRITERIA:
        if Importance(crit).needs_data:  # once, on the seeded first training images
            p.space.calibrate_importance(crit, _calibration_batches(p.data, args.samples, p.config.data.seed))
    print(f"# {args.data}: ResNet-20 baseline {p.base_accuracy:.4f} on validation; {where}", flush=True)
    rows: list[list[str]] = []
    seed_rows: list[list[str]] = []
    for budget in [float(x) for x in args.budgets.split(",")]:
        library = models_at(p, budget)
        extra = {} if args.skip_seeds else seeds_at(p, budget)
        accs = finals(p, {**library, **extra}, budget, seeds, args.final_steps)
        rows += rows_of(p, library, accs, budget)
        if extra:
            arms = {"uniform": library[args.criterion], **extra, LIBRARY: library[LIBRARY]}
            seed_rows += rows_of(p, arms, {**accs, "uniform": accs[args.criterion]}, budget)
    print(
        f"\ntest accuracy after BN recalibration + {args.final_steps} distilled fine-tune steps, seeds {seeds} "
        f"(mean ± std, %); {args.samples} calibration images; {where}; {time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["MAC budget", "channels kept by", "MACs", "test accuracy", "vs torch-pruning uniform"], rows)
    print()
    print_table(
        ["MAC budget", f"one-shot plan ({args.criterion})", "MACs", "test accuracy", "vs torch-pruning uniform"],
        seed_rows,
    )


if __name__ == "__main__":
    main()
