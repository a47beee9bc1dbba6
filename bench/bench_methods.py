"""Which compression method wins where: pruning, SVD, tensor-train with and without sequential training, versatile
filters, and the joint search with every method on, at the same parameter budget and the same final fine-tune.

    .venv/bin/python bench/bench_methods.py                            # Fashion-MNIST, 30 % and 15 % of the params
    .venv/bin/python bench/bench_methods.py --data digits --epochs 30  # the digits ResNet-20
    .venv/bin/python bench/bench_methods.py --budgets 0.3 --seeds 0 --arms prune,versatile
    .venv/bin/python bench/bench_methods.py --smoke    # CI's size: digits, one epoch, 30 %, every arm, 5 steps

One ResNet-20 is trained on the **train** split (cached). For each parameter
budget and seed, every arm's model gets exactly the same final treatment
(:func:`search.train_final`: BN recalibration, ``--final-steps`` fine-tune
steps distilled from the original, the seed's data order), and is measured on
the **test** split, which nothing selects on:

* **pruning only**: the allocator's plan (valued by the measured sensitivity
  the studies' allocator seed uses), pruning alone, repaired with ``fit``;
* **SVD**, **tensor-train**, **versatile (spatial)**, **versatile (spatial +
  channel)**: the allocator's plan with that method alone (its 0-1 program
  chooses each layer's rank or primary filters), repaired with ``fit`` (ranks
  held, so where the method alone cannot reach the budget — spatial versatile
  filters at 15 % — ``fit`` prunes the rest). The allocator's joint
  plan (pruning and a method in one program) is not used: valued by measured
  sensitivity for channels and by kept energy for ranks, it chooses pruning
  almost everywhere, which would make every arm the pruning arm;
* **tensor-train + sequential training**: the tensor-train plan, trained with
  ``evaluate.recipe = "blockwise"`` (each changed block taught to reproduce
  the original block's output, ``--blockwise-steps`` Adam steps per block)
  before the same fine-tune;
* **joint search, every method on**: a ``prunetune`` study at the cap
  (``floor = "cap"``) with ``space.rank = true`` and ``space.methods`` = every
  registered method (the sampler chooses each layer's method; the allocator's
  seed factorizes with SVD), ``--candidates`` candidates, rungs ``--rungs``,
  the best by validation loss, then the same final recipe.

The table gives each arm's parameters and MACs (fractions of the base model),
its test accuracy (mean ± std over the seeds) and the seconds its final
training took (the price of sequential training).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import SMOKE, add_search_args, machine, parse_search_args, parser, print_table, study_overrides
from torch import nn

from search import Search, load_config
from search.operations._finalize import train_final
from search.preparation._prepare import allocator_sensitivity
from spaces import METHODS, Budget, Plan, measure_cost
from spaces.factorization import method_names
from storage import best_within_cap

ARMS = {
    "prune": ("pruning only", None),
    "svd": ("SVD", "svd"),
    "tt": ("tensor-train", "tt"),
    "tt-blockwise": ("tensor-train + sequential training", "tt"),
    "versatile": ("versatile (spatial)", "versatile"),
    "versatile_ch": ("versatile (spatial + channel)", "versatile_ch"),
    "joint": ("joint search, every method on", None),
}


def prepare(args: argparse.Namespace, tmp: Path, budget: str, seed: int, *, joint: bool) -> Any:
    """The study of one budget and seed (the joint search's, or one that only provides the space and data)."""
    overrides = {
        **study_overrides(args, tmp, f"methods-{budget}-{seed}-{joint}"),
        "budget.macs": None,
        "budget.params": budget,
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
        "evaluate.rescore_top": args.rescore_top,
        "evaluate.score": "loss",
        "evaluate.blockwise_steps": args.blockwise_steps,
        "search.candidates": args.candidates if joint else 1,
        "search.seed": seed,
        "search.floor": "cap",
        "space.rank.methods": [m for m in method_names() if m in METHODS]
        if joint
        else None,  # the table present: ranks on
    }
    return Search(load_config(None, {k: v for k, v in overrides.items() if v is not None}))


def one_shot(p: Any, budget: Budget, arm: str) -> nn.Module:
    """The allocator's plan for ``arm`` at ``budget`` (pruning, and the arm's method when it has one)."""
    space, method = p.space, ARMS[arm][1]
    if method is None:
        plan = space.allocate(budget, rank=False, sensitivity=allocator_sensitivity(p)).plan
    else:
        plan = space.allocate(budget, rank=True, prune=False, method=method).plan
    return space.apply(space.fit(plan, budget))


def blockwise(p: Any) -> Any:
    """``p`` with ``evaluate.recipe = "blockwise"`` (what the sequential-training arm is finalized with)."""
    e = p.config.evaluate.model_copy(update={"recipe": "blockwise"})
    return dataclasses.replace(p, config=p.config.model_copy(update={"evaluate": e}))


def run_seed(args: argparse.Namespace, b: float, seed: int, log: dict[str, Any]) -> None:
    """Every arm at budget ``b`` and ``seed``: built, finalized and tested; appends to ``log``."""
    budget = Budget(params=f"{b:.0%}")
    with tempfile.TemporaryDirectory() as td:
        arms = args.arms.split(",")
        p = prepare(args, Path(td), f"{b:.0%}", seed, joint=False).prepare().prepared
        models: dict[str, nn.Module] = {a: one_shot(p, budget, a) for a in arms if a != "joint"}
        if "joint" in arms:
            s = prepare(args, Path(td), f"{b:.0%}", seed, joint=True)
            t = time.perf_counter()
            s.run()
            log["search_s"].append(time.perf_counter() - t)
            pick = best_within_cap(s.prepared.store.candidates(s.prepared.study_id), "loss")
            assert pick is not None, "the joint search finished no candidate"
            models["joint"] = p.space.apply(Plan.from_json(pick.plan))
            log["methods"].append(sorted(set(Plan.from_json(pick.plan).method.values())))
        example = p.data.example_inputs(1)
        for arm, model in models.items():
            cost = measure_cost(model.cpu(), example)
            log["params"].setdefault(arm, []).append(cost.params / p.base_cost.params)
            log["macs"].setdefault(arm, []).append(cost.macs / p.base_cost.macs)
            t = time.perf_counter()
            recipe = blockwise(p) if arm == "tt-blockwise" else p
            _, test = train_final(recipe, model.to(p.device), steps=args.final_steps, seed=seed)
            log["secs"].setdefault(arm, []).append(time.perf_counter() - t)
            log["accs"].setdefault(arm, []).append(float(test or 0.0))
    line = ", ".join(f"{ARMS[k][0]} {v[-1]:.4f}" for k, v in log["accs"].items())
    print(f"budget {b:.0%} params, seed {seed}: {line}", flush=True)


def table_rows(b: float, log: dict[str, Any]) -> list[list[str]]:
    """Per arm at budget ``b``: params, MACs, test accuracy (mean ± std), final training seconds, vs pruning."""
    accs = log["accs"]
    ref = statistics.mean(accs["prune"]) if "prune" in accs else None
    rows = []
    for arm, vals in accs.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        gain = f"{100 * (statistics.mean(vals) - ref):+.2f}" if ref is not None else ""
        rows.append(
            [f"{b:.0%}", ARMS[arm][0], f"{100 * statistics.mean(log['params'][arm]):.1f}%",
             f"{100 * statistics.mean(log['macs'][arm]):.1f}%", f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}",
             gain, f"{statistics.mean(log['secs'][arm]):.0f}"]
        )  # fmt: skip
    return rows


def main() -> None:
    ap = parser(__doc__, budgets="0.3,0.15")
    add_search_args(ap)
    ap.set_defaults(candidates=20)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"which arms to run, of {', '.join(ARMS)}")
    ap.add_argument("--blockwise-steps", type=int, default=100, help="Adam steps per block of sequential training")
    args, seeds = parse_search_args(ap, {**SMOKE, "budgets": "0.3", "blockwise_steps": 5})
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        ap.error(f"--arms: unknown {', '.join(sorted(unknown))}; known: {', '.join(ARMS)}")
    rows: list[list[str]] = []
    t_all = time.perf_counter()
    for b in [float(x) for x in args.budgets.split(",")]:
        log: dict[str, Any] = {"accs": {}, "params": {}, "macs": {}, "secs": {}, "search_s": [], "methods": []}
        for seed in seeds:
            run_seed(args, b, seed, log)
        rows += table_rows(b, log)
        if log["search_s"]:
            print(f"budget {b:.0%}: joint search {statistics.mean(log['search_s']):.0f} s per study; the picks use "
                  f"{log['methods']}", flush=True)  # fmt: skip
    print(
        f"\n# {args.data} ResNet-20; test accuracy after BN recalibration + {args.final_steps} distilled fine-tune "
        f"steps (sequential training: {args.blockwise_steps} steps per block first), seeds {seeds} (mean ± std, "
        f"%); joint search: {args.candidates} candidates, rungs {args.rungs}, scored by validation loss; "
        f"{machine()}; {time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["params budget", "method", "params", "MACs", "test accuracy", "vs pruning only", "final s"], rows)


if __name__ == "__main__":
    main()
