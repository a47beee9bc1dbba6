"""Do cheap scores rank candidates like a long fine-tune does? (EagleEye's question, on our data.)

    .venv/bin/python bench/bench_proxies.py [--data digits] [--plans 12] [--long 1000] [--short 100]

A ResNet-20 baseline is trained (or reused from ./artifacts) on real data; 12
random pruning plans are fitted to 50 % of its MACs; each is scored by
(a) accuracy with no fine-tune, (b) accuracy after BN recalibration
(20 batches), (c) after BN recalibration + a quick fine-tune, (d) after BN
recalibration + a long fine-tune. Prints each plan's scores, the Spearman
correlation of (a), (b), (c) with (d), and the seconds each costs.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import time

import torch
from scipy.stats import spearmanr

from evaluators import Accuracy, BNRecalibration, Context, FineTune, Pipeline, Recipe, load_data, train_baseline
from spaces import Budget, ModelSpace, Plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="digits")
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--long", type=int, default=1000)
    ap.add_argument("--max-val", type=int, default=None, help="subsample validation (default: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    data = load_data(args.data)
    recipe = Recipe() if args.data == "digits" else Recipe(epochs=5, batch_size=128)
    base = train_baseline("zoo:resnet20", data, recipe=recipe, device="cpu")
    print(f"baseline: resnet20 on {args.data}, {base.accuracy:.2%} val accuracy\n")
    space = ModelSpace(base.model, data.example_inputs())
    rng = random.Random(0)
    budget = Budget(macs="50%")
    ctx = Context(
        data=data, teacher=base.model, device=torch.device("cpu"), seed=0, batch_size=64, max_val_samples=args.max_val
    )
    proxies = {
        "a: no fine-tune": Accuracy(),
        "b: BN recalibration": Pipeline([BNRecalibration(20), Accuracy()]),
        f"c: BN + {args.short}-step fine-tune": Pipeline([BNRecalibration(20), FineTune(steps=args.short), Accuracy()]),
        f"d: BN + {args.long}-step fine-tune": Pipeline([BNRecalibration(20), FineTune(steps=args.long), Accuracy()]),
    }
    scores: dict[str, list[float]] = {k: [] for k in proxies}
    seconds: dict[str, list[float]] = {k: [] for k in proxies}
    print("| plan | MACs % | " + " | ".join(proxies) + " |")
    print("|---" * (len(proxies) + 2) + "|")
    for i in range(args.plans):
        raw = Plan({g.id: rng.uniform(0.0, 0.9) for g in space.groups if rng.random() < 0.7})
        plan = space.fit(raw, budget)
        row = []
        for name, ev in proxies.items():
            model = space.apply(plan)
            t = time.perf_counter()
            m = ev.evaluate(copy.deepcopy(model), ctx)
            seconds[name].append(time.perf_counter() - t)
            scores[name].append(float(m.accuracy or 0.0))
            row.append(f"{m.accuracy:.2%}")
        macs = space.cost(plan).ratio(space.base_cost)["macs"]
        print(f"| {i} | {macs:.1%} | " + " | ".join(row) + " |", flush=True)
    ref = scores[list(proxies)[-1]]
    print("\n| proxy | Spearman vs (d) | seconds per candidate |")
    print("|---|---|---|")
    for name in proxies:
        rho = spearmanr(scores[name], ref).statistic if name != list(proxies)[-1] else 1.0
        print(f"| {name} | {rho:.2f} | {sum(seconds[name]) / len(seconds[name]):.2f} |")


if __name__ == "__main__":
    main()
