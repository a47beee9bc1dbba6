"""Time the channel-pruning space: build, analytic cost, apply + measure, fit.

    .venv/bin/python bench/bench_space.py [--size 224] [--models resnet50,mobilenet_v2]

Prints a Markdown table. The analytic ``cost`` must be >= 100x faster than
``apply`` + ``measure_cost`` (the issue's bar); the last column says by how much.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from evaluators import build_model
from spaces import Budget, ModelSpace, measure_cost


def _time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _row(name: str, size: int) -> str:
    model = build_model(f"torchvision:{name}").eval()
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    space = ModelSpace(model, x)
    build = time.perf_counter() - t
    plan = space.uniform_plan(0.4)
    cost_s = _time(lambda: space.cost(plan), 2000)
    apply_s = _time(lambda: space.apply(plan), 3)
    pruned = space.apply(plan)
    measure_s = _time(lambda: measure_cost(pruned, x), 3)
    budget = Budget(macs="50%")
    fit_s = _time(lambda: space.fit(plan, budget), 5)
    if space.cost(plan) != measure_cost(pruned, x):
        raise RuntimeError(f"{name}: the analytic cost differs from the measured one")
    return (
        f"| {name} | {len(space.groups)} | {build:.2f} | {cost_s * 1e6:.0f} | {apply_s:.3f} | {measure_s:.3f} "
        f"| {fit_s * 1e3:.1f} | {(apply_s + measure_s) / cost_s:,.0f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"input 1x3x{args.size}x{args.size}\n")
    print(
        "| model | groups | build (s) | cost (µs) | apply (s) | measure_cost (s) "
        "| fit 50% MACs (ms) | speed-up of cost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(_row(name, args.size))


if __name__ == "__main__":
    main()
