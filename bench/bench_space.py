"""Time the channel-pruning space: build, analytic cost, apply + measure, fit; or sweep every torchvision model.

    .venv/bin/python bench/bench_space.py [--size 224] [--models resnet50,mobilenet_v2]
    .venv/bin/python bench/bench_space.py --sweep [--size 64] [--plans 5] [--exclude vit_h_14] [--only swin_t,swin_b]
    .venv/bin/python bench/bench_space.py --smoke        # both, on two small models at 32x32 (seconds; CI)

Prints a Markdown table. The analytic ``cost`` must be >= 100x faster than
``apply`` + ``measure_cost`` (the issue's bar); the last column says by how much.

``--sweep`` builds every classification model torchvision lists (untrained,
10 classes) at ``--size`` (ViTs at four patches a side, MaxViT at 224, the
smallest it takes) and reports the space's build time and its support row
(:func:`spaces.support`): prunable groups of all the dependency groups
torch-pruning finds, the excluded ones by reason, factorizable layers, heads
pruned, and ``--plans`` plans (at least 5) checked exact through the sampler's
own mapping with the study's default ``[space]`` options and ranks: its most
aggressive plan (every group at ``max_ratio``, every factorizable layer at the
lowest rank fraction) and random ones ("5/5 exact", or the first plan that was
not and what differs), with a summary line (models with every plan exact,
median build time, models over 3 s).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from evaluators import build_model
from search._config import SpaceConfig
from spaces import Budget, ModelSpace, Support, check_cost, measure_cost, support

SMOKE = ("mobilenet_v3_small", "squeezenet1_1")


def _time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _row(name: str, size: int, repeat: int = 3) -> str:
    model = build_model(f"torchvision:{name}").eval()
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    space = ModelSpace(model, x)
    build = time.perf_counter() - t
    plan = space.uniform_plan(0.4)
    cost_s = _time(lambda: space.cost(plan), 2000)
    apply_s = _time(lambda: space.apply(plan), repeat)
    pruned = space.apply(plan)
    measure_s = _time(lambda: measure_cost(pruned, x), repeat)
    budget = Budget(macs="50%")
    fit_s = _time(lambda: space.fit(plan, budget), repeat)
    problem = check_cost(space, plan)
    if problem is not None:
        raise RuntimeError(f"{name}: the analytic cost differs from the measured one: {problem}")
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


def _sweep_row(name: str, size: int, plans: int) -> tuple[str, float | None, bool]:
    """The sweep's row of one model, its build time (None: refused or failed) and whether every plan was exact."""
    torch.manual_seed(0)
    model, x = _sweep_model(name, size)
    t = time.perf_counter()
    try:
        space = ModelSpace(model, x)
    except Exception as exc:  # refused (UnsupportedModelError) or failed: the row says which
        cells = ["", "", "", "", f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"]
        return f"| {name} | {x.shape[-1]} | | " + " | ".join(cells) + " |", None, False
    build = time.perf_counter() - t
    row = support(space, SpaceConfig.model_validate({"rank": {}}).options(), plans, seed=0)
    text = " | ".join(row.cells())
    return f"| {name} | {x.shape[-1]} | {build:.1f} | {text} |", build, row.exact == len(row.checks)


def sweep(size: int, exclude: set[str], only: set[str], plans: int) -> None:
    """Print the sweep's table, row by row, and its summary line."""
    print("| model | input | build s | " + " | ".join(Support.CELLS) + " |")
    print("|---|---|---|" + "---|" * len(Support.CELLS))
    builds, exact = [], 0
    for name in torchvision.models.list_models(module=torchvision.models):
        if only and name not in only:
            continue
        if name in exclude:
            print(f"| {name} | | | | | | | not run (--exclude) |")
            continue
        row, build, all_exact = _sweep_row(name, size, plans)
        print(row, flush=True)
        exact += all_exact
        if build is not None:
            builds.append(build)
    over = sum(b > 3.0 for b in builds)
    median = statistics.median(builds) if builds else float("nan")
    print(
        f"\n{len(builds)} spaces built, {exact} with {plans}/{plans} plans exact; "
        f"build time median {median:.1f} s, {over} over 3 s"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--sweep", action="store_true", help="every torchvision classification model (see the docs)")
    ap.add_argument("--exclude", default="", help="models the sweep skips (comma-separated)")
    ap.add_argument("--only", default="", help="the models the sweep runs (comma-separated; default: every one)")
    ap.add_argument("--plans", type=int, default=5, help="plans the sweep checks per model (at least 5)")
    ap.add_argument("--smoke", action="store_true", help=f"the table and the sweep on {', '.join(SMOKE)} at 32x32")
    args = ap.parse_args()
    if args.plans < 5:
        raise SystemExit(f"bench_space: --plans must be at least 5, got {args.plans}")
    if args.smoke:
        args.size, args.models, args.only = 32, ",".join(SMOKE), ",".join(SMOKE)
    if args.sweep or args.smoke:
        print(f"torchvision {torchvision.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        only = set(filter(None, args.only.split(",")))
        sweep(args.size, set(filter(None, args.exclude.split(","))), only, args.plans)
        if not args.smoke:
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
        print(_row(name, args.size, repeat=1 if args.smoke else 3))


if __name__ == "__main__":
    main()
