"""Is the front worth reading at every level? Its members at the cap, half and a quarter of it, against torch-pruning.

    .venv/bin/python bench/bench_front.py                        # Fashion-MNIST, cap 50 %, seeds 0,1
    .venv/bin/python bench/bench_front.py --seeds 0 --candidates 12   # a quick look
    .venv/bin/python bench/bench_front.py --smoke                # CI's size: digits, one epoch, 3 candidates

The default curve study of ``examples/fashion_mnist.toml`` (a MAC cap, the
floor a quarter of it, rungs 50 → 200 with 2,000 validation images below the
top rung, the best three re-scored) on the cached Fashion-MNIST ResNet-20 of
``bench_search.py``. For each level — the cap, half of it, a quarter of it —
the front's pick at that level (:func:`storage.best_within_cap` among the
front members whose MACs are within the level) is rebuilt from the base
weights and finalized (:func:`search.train_final`: BN recalibration,
``--final-steps`` distilled steps, the seed's data order), and so is
torch-pruning's uniform pruning (``MagnitudePruner``, group L1, ratio bisected)
at that member's MACs. Both are measured on the **test** split, which the
study never reads. Target: the front never falls below the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _shared import (  # bench/, beside this script
    SMOKE,
    add_search_args,
    machine,
    parse_search_args,
    parser,
    print_table,
    study_overrides,
    torch_pruning_at,
)

from search import Search, load_config
from search.operations._finalize import train_final
from spaces import Plan, measure_cost
from storage import best_within_cap

LEVELS = {"cap": 1.0, "cap/2": 0.5, "cap/4": 0.25}
NAMES = ("front", "torch-pruning uniform")


def main() -> None:
    ap = parser(__doc__, budgets="0.5")
    add_search_args(ap)
    ap.set_defaults(seeds="0,1")
    args, seeds = parse_search_args(ap, SMOKE)
    where = machine()
    cap = float(args.budgets.split(",")[0])
    t_all = time.perf_counter()
    res: dict[str, dict[str, list[float]]] = {lv: {} for lv in LEVELS}
    for seed in seeds:
        _seed(args, cap, seed, res)
    print(
        f"\n# {args.data} ResNet-20, cap {cap:.0%} of the MACs, floor a quarter of it, {args.candidates} candidates, "
        f"rungs {args.rungs}, the best {args.rescore_top} re-scored, seeds {seeds}; test accuracy after BN "
        f"recalibration + {args.final_steps} distilled steps (mean ± std, %); "
        f"{where}; {time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["level", "front member (MACs)", "test accuracy", "torch-pruning uniform (MACs)", "test accuracy",
                 "front − torch-pruning"], _rows(res))  # fmt: skip


def _seed(args: argparse.Namespace, cap: float, seed: int, res: dict[str, dict[str, list[float]]]) -> None:
    """One study at ``seed``; its picks at every level and torch-pruning's at their MACs, finalized, into ``res``."""
    with tempfile.TemporaryDirectory() as td:
        overrides = {
            **study_overrides(args, Path(td), f"front-{seed}"),
            "budget.macs": f"{cap:.0%}",
            "evaluate.rungs": args.rungs,
            "evaluate.max_val_samples": args.max_val,
            "evaluate.rescore_top": args.rescore_top,
            "search.candidates": args.candidates,
            "search.seed": seed,
        }
        s = Search(load_config(None, overrides)).prepare()
        s.run()
        p = s.prepared
        front = p.store.front(p.study_id)
        example = p.data.example_inputs(1)
        for level, share in LEVELS.items():
            limit = share * cap * p.base_cost.macs
            pick = best_within_cap([r for r in front if (r.macs or 0.0) <= limit * (1 + 1e-9)], s.cfg.evaluate.score)
            if pick is None:
                print(f"seed {seed}: the front has no member within {level}", flush=True)
                continue
            ours = p.space.apply(Plan.from_json(pick.plan))
            macs = measure_cost(ours, example).macs
            theirs = torch_pruning_at(p.base_model, example, macs, global_pruning=False)
            for name, m in zip(NAMES, (ours, theirs), strict=True):
                _, test = train_final(p, m.to(p.device), steps=args.final_steps, seed=seed)
                res[level].setdefault(name, []).append(float(test or 0.0))
                res[level].setdefault(f"{name} MACs", []).append(measure_cost(m.cpu(), example).macs)
            res[level].setdefault("base", []).append(p.base_cost.macs)
            line = ", ".join(f"{k} {v[-1]:.4g}" for k, v in res[level].items())
            print(f"seed {seed} {level}: {line}", flush=True)


def _rows(res: dict[str, dict[str, list[float]]]) -> list[list[str]]:
    rows = []
    for level, r in res.items():
        if not r.get("front"):
            continue
        f, t = (r[k] for k in NAMES)
        sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in (f, t)]
        share = [statistics.mean(m / b for m, b in zip(r[f"{k} MACs"], r["base"], strict=True)) for k in NAMES]
        gain = [a - b for a, b in zip(f, t, strict=True)]
        rows.append(
            [level, f"{100 * share[0]:.1f}%", f"{100 * statistics.mean(f):.2f} ± {100 * sd[0]:.2f}",
             f"{100 * share[1]:.1f}%", f"{100 * statistics.mean(t):.2f} ± {100 * sd[1]:.2f}",
             f"{100 * statistics.mean(gain):+.2f} (per seed {', '.join(f'{100 * g:+.2f}' for g in gain)})"]
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
