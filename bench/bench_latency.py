"""How close is the latency model to what the device measures? The prediction error per model, runtime and plan kind.

    .venv/bin/python bench/bench_latency.py                                  # every row (minutes)
    .venv/bin/python bench/bench_latency.py --models resnet20 --runtimes torch
    .venv/bin/python bench/bench_latency.py --models resnet50,mobilenet_v2 --runtimes onnxruntime --kinds pruning
    .venv/bin/python bench/bench_latency.py --smoke                          # CI: ResNet-20, torch, 3 plans

For each model (torchvision's ``resnet50`` and ``mobilenet_v2`` at 1×3×224×224,
and the zoo's ResNet-20 at 1×1×28×28, the Fashion-MNIST shape; fresh weights:
latency does not read them) and each runtime (torch's eager runtime, ONNX
Runtime with every model exported), a device profile is measured on this
machine (:func:`spaces.profile_space`: batch 1, ``--threads``; with the svd
factor chains when joint plans are benched), and then, per plan kind, ten
plans are built and each is both predicted (``space.cost(plan).latency``) and
measured end to end (:func:`spaces.measure_latency`, the median of ``--runs``
calls after 5 warm-up calls):

* **pruning**: uniform plans at 20, 40 and 60 % of every group pruned; four
  random per-group plans (each group's ratio uniform in [0, 0.7], seeded); the
  allocator's plans (``rank=False``) at 70, 50 and 30 % of the MACs.
* **joint** (pruning and svd ranks): uniform plans at 20 and 50 % with a random
  rank fraction (0.2 to 0.9 of the break-even rank) on every layer with a chain;
  five random per-group plans with random ranks on a random half of those
  layers; the allocator's joint plans (``rank=True``) at 70, 50 and 30 %.

Each row gives the median and the 90th percentile of the absolute relative error
``|predicted - measured| / measured`` over its plans (the target: median ≤ 10 %
and p90 ≤ 20 %), the median signed error (negative: predicted too fast) and the
largest. The plans are printed one per line as they are measured.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from _shared import machine, parse, print_table  # bench/, beside this script

from spaces import Budget, DeviceProfile, ModelSpace, Plan, measure_latency, profile_space

MODELS = {
    "resnet50": ("torchvision:resnet50", (1, 3, 224, 224)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (1, 3, 224, 224)),
    "resnet20": ("zoo:resnet20", (1, 1, 28, 28)),
}
METHOD = "svd"
SMOKE = {
    "models": "resnet20",
    "runtimes": "torch",
    "kinds": "pruning",
    "plans": 3,
    "runs": 5,
    "profile_runs": 2,
    "threads": 1,
}


def _space(name: str) -> ModelSpace:
    """The model's space on its example input (fresh weights, seeded)."""
    from evaluators import build_model

    spec, shape = MODELS[name]
    torch.manual_seed(0)
    extra = {"in_channels": shape[1], "num_classes": 10} if spec.startswith("zoo:") else {}
    return ModelSpace(build_model(spec, **extra).eval(), torch.randn(shape))


def _chain_layers(prof: DeviceProfile) -> list[str]:
    return sorted(n for n, tables in prof.factored.items() if METHOD in tables)


def _with_ranks(plan: Plan, layers: list[str], rng: np.random.Generator) -> Plan:
    """``plan`` with every layer of ``layers`` factorized by svd at a random fraction of its break-even rank."""
    ranks = {n: round(float(rng.uniform(0.2, 0.9)), 2) for n in layers}
    return plan.replace(rank=ranks, method=dict.fromkeys(layers, METHOD))


def _half(layers: list[str], rng: np.random.Generator) -> list[str]:
    return sorted(rng.choice(layers, size=max(1, len(layers) // 2), replace=False).tolist())


def _random(space: ModelSpace, rng: np.random.Generator) -> Plan:
    return Plan({g.id: round(float(rng.uniform(0.0, 0.7)), 3) for g in space.groups})


def _pruning_plans(space: ModelSpace, rng: np.random.Generator) -> Iterator[tuple[str, Plan]]:
    """The pruning-only plans, each built when it is asked for (see the module docs)."""
    for r in (0.2, 0.4, 0.6):
        yield f"uniform {r:.0%}", space.uniform_plan(r)
    for i in range(4):
        yield f"random #{i}", _random(space, rng)
    for b in (0.7, 0.5, 0.3):
        yield f"allocator {b:.0%} MACs", space.allocate(Budget(macs=f"{b:.0%}"), rank=False).plan


def _joint_plans(space: ModelSpace, prof: DeviceProfile, rng: np.random.Generator) -> Iterator[tuple[str, Plan]]:
    """The plans with pruning and svd ranks, each built when it is asked for (see the module docs)."""
    layers = _chain_layers(prof)
    for r in (0.2, 0.5):
        yield f"uniform {r:.0%} + ranks", _with_ranks(space.uniform_plan(r), layers, rng)
    for i in range(5):
        yield f"random #{i} + ranks", _with_ranks(_random(space, rng), _half(layers, rng), rng)
    for b in (0.7, 0.5, 0.3):
        yield f"allocator {b:.0%} MACs, ranks", space.allocate(Budget(macs=f"{b:.0%}"), rank=True).plan


def _measure(args: argparse.Namespace, space: ModelSpace, plan: Plan, runtime: str) -> float:
    model = space.apply(plan)
    return measure_latency(model, space.example_inputs, runs=args.runs, runtime=runtime, threads=args.threads)[
        "measured_ms"
    ]


def _bench_kind(
    args: argparse.Namespace, space: ModelSpace, runtime: str, plans: Iterator[tuple[str, Plan]]
) -> list[float]:
    """Predict and measure each plan (the first ``--plans``); the signed relative errors, printed as they come."""
    errors = []
    for label, plan in itertools.islice(plans, args.plans):
        predicted = space.cost(plan).latency
        if predicted is None:
            raise RuntimeError(f"{label}: the profile does not predict this plan")
        measured = _measure(args, space, plan, runtime)
        errors.append((predicted - measured) / measured)
        macs = space.cost(plan).macs / space.base_cost.macs
        print(f"  {label}: MACs {macs:.1%}, measured {measured:.3f} ms, predicted {predicted:.3f} ms, "
              f"error {100 * errors[-1]:+.1f} %", flush=True)  # fmt: skip
    return errors


def _row(name: str, runtime: str, kind: str, errors: list[float], note: dict[str, Any]) -> list[str]:
    size = np.abs(np.array(errors))
    return [name, runtime, kind, str(len(errors)), f"{100 * np.median(size):.1f}%",
            f"{100 * np.percentile(size, 90):.1f}%", f"{100 * np.median(errors):+.1f}%", f"{100 * size.max():.1f}%",
            f"{note['dense']:.2f}", f"{note['profile_s']:.0f}"]  # fmt: skip


def _bench_model(args: argparse.Namespace, name: str, runtime: str) -> list[list[str]]:
    space = _space(name)
    kinds = args.kinds.split(",")
    methods = [METHOD] if "joint" in kinds else []
    t = time.perf_counter()
    prof = profile_space(space, threads=args.threads, runtime=runtime, methods=methods, runs=args.profile_runs)
    note = {"profile_s": time.perf_counter() - t, "dense": _measure(args, space, Plan(), runtime)}
    space.attach_profile(prof)
    worst = max(abs(p - m) / m for _, m, p in prof.calibration)
    print(f"{name}, {runtime}: profile {note['profile_s']:.0f} s ({len(prof.layers)} layers, "
          f"{len(prof.factored)} with chains), dense {note['dense']:.2f} ms, scale {prof.scale:.2f}, "
          f"rest {prof.rest[0]:.2f} + {prof.rest[1]:.2f} x ms, multiple {prof.multiple}, "
          f"calibration error <= {100 * worst:.1f} %", flush=True)  # fmt: skip
    rows = []
    for kind in kinds:
        rng = np.random.default_rng(0)
        plans = _pruning_plans(space, rng) if kind == "pruning" else _joint_plans(space, prof, rng)
        rows.append(_row(name, runtime, kind, _bench_kind(args, space, runtime, plans), note))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2,resnet20", help=f"among {', '.join(MODELS)}")
    ap.add_argument("--runtimes", default="torch,onnxruntime", help="torch, onnxruntime or both")
    ap.add_argument("--kinds", default="pruning,joint", help="plan kinds: pruning, joint (pruning and svd ranks)")
    ap.add_argument("--plans", type=int, default=10, help="plans per row (the first N of the kind's ten)")
    ap.add_argument("--runs", type=int, default=15, help="timed end-to-end calls per plan (median kept)")
    ap.add_argument("--profile-runs", type=int, default=7, help="timed calls per point of the profile")
    ap.add_argument("--threads", type=int, default=2, help="torch's and ONNX Runtime's intra-op threads")
    args = parse(ap, SMOKE)
    torch.set_num_threads(args.threads)
    t0, started = time.perf_counter(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [row for runtime in args.runtimes.split(",") for name in args.models.split(",")
            for row in _bench_model(args, name, runtime)]  # fmt: skip
    print(f"\n# {' '.join(['python', *sys.argv])}")
    print(f"# {machine()}; batch 1, {args.threads} threads; {started}; {time.perf_counter() - t0:.0f} s")
    print_table(["model", "runtime", "plans", "n", "median |error|", "p90 |error|", "median error", "max |error|",
                 "dense ms", "profile s"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
