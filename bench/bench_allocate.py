"""Allocator vs uniform baselines on ResNet-20 trained on real data, no fine-tuning.

    .venv/bin/python bench/bench_allocate.py [--epochs 30] [--skip-resnet50]
    .venv/bin/python bench/bench_allocate.py --smoke    # CI's size: 1 epoch, 50 %, resnet18 at 64x64

Trains a ResNet-20 (1 input channel) on scikit-learn's digits (1,797 real 8x8
images, stratified 80/20 split, seed 0), then, at 30/50/70 % of the MACs,
compares: uniform pruning (one ratio for every group, L1), uniform rank (one SVD
rank fraction for every layer), and the allocator's pruning-only, rank-only and
joint plans. Reported: validation accuracy with no fine-tuning and no BN
recalibration, the logits' relative error against the base model, the plan's
MACs and params, and the allocator's solver time. Then times the allocator on
torchvision's resnet50 at 224x224 (the issue's bar: under 10 s).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from typing import Any

import numpy as np
import torch
from _shared import parse  # bench/, beside this script
from torch import nn

from evaluators import build_model
from spaces import Budget, ModelSpace, Plan


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xva), torch.tensor(yva)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out = model.eval()(x)
    return float((out.argmax(1) == y).float().mean()), float((out - ref).norm() / ref.norm())


def uniform_rank(space: ModelSpace, macs: float) -> Plan:
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if space.cost(Plan(rank={layer.name: mid for layer in space.layers})).macs <= macs:
            lo = mid
        else:
            hi = mid
    return Plan(rank={layer.name: lo for layer in space.layers})


MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("allocator: pruning", {"rank": False}),
    ("allocator: rank", {"prune": False}),
    ("allocator: joint", {}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--budgets", default="0.3,0.5,0.7", help="MAC budgets, fractions of the base model")
    ap.add_argument("--large", default="torchvision:resnet50", help="the model the allocator is timed on")
    ap.add_argument("--size", type=int, default=224, help="the large model's input size")
    ap.add_argument("--skip-resnet50", action="store_true", help="skip the large model")
    args = parse(ap, {"epochs": 1, "budgets": "0.5", "large": "torchvision:resnet18", "size": 64})
    if args.smoke:
        torch.set_num_threads(1)  # as the other smoke runs: a shared runner's second core is not ours
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    xtr, ytr, xva, yva = digits()
    model = build_model("zoo:resnet20", in_channels=1, num_classes=10)
    t = time.perf_counter()
    train(model, xtr, ytr, args.epochs)
    with torch.no_grad():
        ref = model(xva)
    base_acc, _ = score(model, xva, yva, ref)
    secs = time.perf_counter() - t
    print(f"ResNet-20 on digits: {base_acc:.2%} val accuracy after {args.epochs} epochs ({secs:.0f} s)\n")
    space = ModelSpace(model, xtr[:1])
    print("| MACs budget | plan | MACs % | params % | val acc (no FT) | logit rel. error | solver (s) |")
    print("|---|---|---|---|---|---|---|")
    for frac in [float(b) for b in args.budgets.split(",")]:
        for row in plan_rows(space, frac, (xva, yva, ref)):
            print(row)
    if not args.skip_resnet50:
        large(args.large, args.size, args.budgets)


def plan_rows(space: ModelSpace, frac: float, val: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> list[str]:
    """The table's rows at a MAC budget of ``frac``: the uniform plans and the allocator's, scored on ``val``."""
    budget = Budget(macs=f"{frac:.0%}")
    rows: list[tuple[str, Plan, float | None]] = [
        ("uniform pruning (L1)", space.fit(Plan(), budget), None),
        ("uniform rank (SVD)", uniform_rank(space, frac * space.base_cost.macs), None),
    ]
    for label, kwargs in MODES:
        allocation = space.allocate(budget, **kwargs)
        rows.append((label, allocation.plan, allocation.seconds))
    out = []
    for label, plan, secs in rows:
        cost = space.cost(plan).ratio(space.base_cost)
        acc, err = score(space.apply(plan), *val)
        solver = f"{secs:.2f}" if secs is not None else ""
        share = f"{cost['macs']:.1%} | {cost['params']:.1%}"
        out.append(f"| {frac:.0%} | {label} | {share} | {acc:.2%} | {err:.3f} | {solver} |")
    return out


def large(spec: str, size: int, budgets: str) -> None:
    """The allocator timed on ``spec`` (random weights) at ``size`` x ``size``, MACs and params capped together."""
    big = ModelSpace(build_model(spec), torch.randn(1, 3, size, size))
    print(f"\nallocator on {spec} (random weights), input 1x3x{size}x{size}, MACs + params budget:\n")
    print("| budget | mode | solver | seconds | rounds | MACs % | params % |")
    print("|---|---|---|---|---|---|---|")
    for frac in [f"{float(b):.0%}" for b in budgets.split(",")]:
        for label, kwargs in (MODES[2], MODES[0], MODES[1]):  # joint, pruning, rank
            info = big.allocate(Budget(macs=frac, params=frac), **kwargs)
            r = big.cost(info.plan).ratio(big.base_cost)
            print(
                f"| {frac} | {label.removeprefix('allocator: ')} | {info.solver} | {info.seconds:.2f} | {info.rounds} "
                f"| {r['macs']:.1%} | {r['params']:.1%} |"
            )


if __name__ == "__main__":
    main()
