"""Does depth buy more speed per MAC than width on this CPU? Batch-1 latency of plans at the same MACs.

    .venv/bin/python bench/bench_depth.py                      # resnet50, 224x224, 30 % and 50 % of the MACs
    .venv/bin/python bench/bench_depth.py --budgets 0.5 --drops 0,4 --runtimes torch
    .venv/bin/python bench/bench_depth.py --smoke              # CI: the zoo's ResNet-20 on 32x32, two runs

For each MAC budget, one plan per number of dropped blocks (``--drops``: 0 is
width alone): the least influential blocks dropped (the sampler's order,
:mod:`spaces.dimensions._depth`), then the uniform pruning moved onto the
budget by ``fit`` (one ratio for every group, the channels the space's
criterion keeps). Every plan has the same MACs within ``fit``'s rounding; the
table gives each one's batch-1 latency in torch (eager) and ONNX Runtime (the
model exported, CPU), measured end to end (:func:`spaces.measure_latency`:
median and 90th percentile of ``--runs`` calls), and the speed-up over the
dense model. Accuracy is a separate question (``bench/bench_search.py
--searches search,depth``): the weights here are random, which does not change
a latency.
"""

from __future__ import annotations

import argparse
import time

import torch
from _shared import machine, parse, print_table  # bench/, beside this script

from evaluators import build_model
from spaces import Budget, ModelSpace, Plan, measure_latency
from spaces.dimensions import Sampled, dimension, role_of

SMOKE = {"model": "zoo:resnet20", "size": 32, "budgets": "0.5", "drops": "0,2", "runs": 2, "warmup": 1}


def plans(space: ModelSpace, budget: float, drops: list[int]) -> dict[int, Plan]:
    """Per number of dropped blocks, the plan at ``budget`` of the MACs (the sampler's drop order)."""
    depth = dimension("depth")
    sampled, options = role_of(depth, Sampled), depth.options
    assert sampled is not None and options is not None
    out = {}
    for k in drops:
        entries = sampled.from_params(space, {"blocks": float(k)}, {"depth": options(max_share=1.0)})
        plan = Plan(depth=entries["depth"], importance=space.importance)
        out[k] = space.fit(plan, Budget(macs=f"{budget:.0%}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--budgets", default="0.3,0.5", help="MAC budgets, fractions of the base model")
    ap.add_argument("--drops", default="0,2,4,6", help="numbers of blocks dropped (0: width alone)")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = parse(ap, SMOKE)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    space = ModelSpace(build_model(args.model, num_classes=10).eval(), (x,))
    runtimes = args.runtimes.split(",")
    dense = {rt: _ms(space.model, x, rt, args) for rt in runtimes}
    rows = [["100%", "dense", "0", "100.0%", *(f"{dense[rt][0]:.2f} ({dense[rt][1]:.2f})" for rt in runtimes), ""]]
    for b in [float(v) for v in args.budgets.split(",")]:
        for k, plan in plans(space, b, [int(v) for v in args.drops.split(",")]).items():
            model = space.apply(plan)
            ms = {rt: _ms(model, x, rt, args) for rt in runtimes}
            macs = space.cost(plan).macs / space.base_cost.macs
            ups = ", ".join(f"{dense[rt][0] / ms[rt][0]:.2f}x" for rt in runtimes)
            what = "width alone" if not k else "depth + width"
            times = [f"{m:.2f} ({p:.2f})" for m, p in ms.values()]
            rows.append([f"{b:.0%}", what, str(k), f"{100 * macs:.1f}%", *times, ups])
    print(
        f"\n# {args.model} at {args.size}x{args.size}, batch 1, {args.threads} threads; latency ms: median (p90) of "
        f"{args.runs} calls; {machine()}; {time.perf_counter() - t0:.0f} s\n"
    )
    print_table(["MAC budget", "plan", "blocks dropped", "MACs", *(f"{rt} ms" for rt in runtimes), "speed-up"], rows)


def _ms(model: torch.nn.Module, x: torch.Tensor, runtime: str, args: argparse.Namespace) -> tuple[float, float]:
    out = measure_latency(model, x, runs=args.runs, warmup=args.warmup, runtime=runtime, threads=args.threads)
    return out["measured_ms"], out["p90_ms"]


if __name__ == "__main__":
    main()
