"""Time the channel-pruning space: build, analytic cost, apply + measure, fit; or sweep every torchvision model.

    .venv/bin/python bench/bench_space.py [--size 224] [--models resnet50,mobilenet_v2]
    .venv/bin/python bench/bench_space.py --sweep [--size 64] [--exclude vit_h_14] [--only swin_t,swin_b]

Prints a Markdown table. The analytic ``cost`` must be >= 100x faster than
``apply`` + ``measure_cost`` (the issue's bar); the last column says by how much.

``--sweep`` builds every classification model torchvision lists (untrained,
10 classes) at ``--size`` (ViTs at four patches a side, MaxViT at 224, the
smallest it takes) and reports the space's build time, its groups and
excluded groups, and whether a random prune plan and a random prune + rank
plan cost exactly what the built models measure ("exact"), or the refusal or
error, with a summary line (median build time, models over 3 s).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from evaluators import build_model
from spaces import Budget, ModelSpace, Plan, measure_cost


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


def _sweep_model(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    extra: dict[str, object] = {}
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        extra["image_size"] = size = 4 * patch
    if name == "maxvit_t":
        size = 224
    if name in ("googlenet", "inception_v3"):
        extra = {"aux_logits": False, "init_weights": True}
        size = max(size, 96)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **extra).eval()
    return model, torch.randn(1, 3, size, size)


def _outcome(space: ModelSpace, x: torch.Tensor, plan: Plan) -> str:
    try:
        pruned = space.apply(plan)
        return "exact" if space.cost(plan) == measure_cost(pruned, x) else "**differs**"
    except Exception as exc:  # a bench reports every failure as a row
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"


def _sweep_row(name: str, size: int) -> tuple[str, float | None]:
    torch.manual_seed(0)
    model, x = _sweep_model(name, size)
    t = time.perf_counter()
    try:
        space = ModelSpace(model, x)
    except Exception as exc:  # refused (UnsupportedModelError) or failed: the row says which
        return f"| {name} | {x.shape[-1]} | | | | {type(exc).__name__}: {str(exc)[:80]} | |", None
    build = time.perf_counter() - t
    rng = random.Random(name)
    prune = {g.id: rng.uniform(0.25, 0.6) for g in space.groups if rng.random() < 0.7}
    ranked = rng.sample(space.layers, min(3, len(space.layers)))
    joint = Plan(prune=prune, rank={layer.name: 0.3 for layer in ranked})
    row = (
        f"| {name} | {x.shape[-1]} | {build:.1f} | {len(space.groups)} | {len(space.excluded)} "
        f"| {_outcome(space, x, Plan(prune))} | {_outcome(space, x, joint)} |"
    )
    return row, build


def sweep(size: int, exclude: set[str], only: set[str]) -> None:
    print("| model | input | build s | groups | excluded | prune plan | prune + rank plan |")
    print("|---|---|---|---|---|---|---|")
    builds = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if only and name not in only:
            continue
        if name in exclude:
            print(f"| {name} | | | | | not run (--exclude) | |")
            continue
        row, build = _sweep_row(name, size)
        print(row, flush=True)
        if build is not None:
            builds.append(build)
    over = sum(b > 3.0 for b in builds)
    print(f"\n{len(builds)} spaces built; build time median {statistics.median(builds):.1f} s, {over} over 3 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--sweep", action="store_true", help="every torchvision classification model (see the docs)")
    ap.add_argument("--exclude", default="", help="models the sweep skips (comma-separated)")
    ap.add_argument("--only", default="", help="the models the sweep runs (comma-separated; default: every one)")
    args = ap.parse_args()
    if args.sweep:
        print(f"torchvision {torchvision.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        sweep(args.size, set(filter(None, args.exclude.split(","))), set(filter(None, args.only.split(","))))
        return
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
