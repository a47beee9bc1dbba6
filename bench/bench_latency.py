"""Does a pruned model run as much faster as its MACs say? MAC-only plans, round_to = "auto", latency budgets.

    .venv/bin/python bench/bench_latency.py                               # the three models, 50 % and 30 %
    .venv/bin/python bench/bench_latency.py --models resnet20 --budgets 0.5
    .venv/bin/python bench/bench_latency.py --runtime onnxruntime --models resnet50,mobilenet_v2
    .venv/bin/python bench/bench_latency.py --methods svd --models resnet20  # and (d): pruning with ranks

For each model (torchvision ``resnet50`` and ``mobilenet_v2`` at 1×3×224×224 with
fresh weights — latency does not read them —, and the Fashion-MNIST ResNet-20 of
``bench_search.py``), a device profile is measured on this machine
(:func:`spaces.profile_space`, batch 1, ``--threads``, in ``--runtime``: torch's
eager runtime or ONNX Runtime, every model exported), and at each MAC budget
three plans are built the way the studies' strongest seed is (the global
ranking, :meth:`spaces.ModelSpace.global_plan`):

(a) **MAC-only**, ``round_to = 1``: the budget on MACs;
(b) **round_to = "auto"**: the same, kept counts rounded to the profile's channel multiple;
(c) **latency-aware**: ``round_to = "auto"`` and a latency budget equal to (a)'s
    *measured* latency, so (c) is at most as slow as (a) by the prediction;
(d) with ``--methods svd`` (the profile then times those methods' factor chains
    too): the allocator's joint plan, channels and ranks of the first method, at
    the MAC budget with ``round_to = "auto"`` — how well a plan with factorized
    layers is predicted.

Each model is then timed end to end (:func:`spaces.measure_latency`: median of
``--runs`` calls after 5 warm-up calls). Columns: MACs kept, measured ms,
speed-up over the dense model, MAC reduction, **speed-up ÷ MAC reduction** (1: as
fast as the MACs say), predicted ms and the prediction error. For the
ResNet-20 the validation accuracy after the same final recipe as
``bench_search.py`` (BN recalibration, ``--final-steps`` distilled steps) is
added; the 224×224 models have no data here, so no accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from _shared import machine, parser, print_table, study_overrides  # bench/, beside this script

from search import Search, load_config
from search.operations._finalize import train_final
from spaces import Budget, ModelSpace, Plan, measure_latency, profile_space

ARMS = (
    "(a) MAC-only, round_to 1",
    '(b) round_to "auto"',
    "(c) latency budget = (a)'s measured",
    "(d) allocator, channels and ranks",
)


def _space(args: argparse.Namespace, name: str, tmp: Path) -> tuple[ModelSpace, Any]:
    """The model's space, and (ResNet-20 only) the prepared study that finalizes its plans."""
    if name == "resnet20":
        overrides = {**study_overrides(args, tmp, "latency"), "search.candidates": 1}
        p = Search(load_config(None, overrides)).prepare().prepared
        return p.space, p
    from evaluators import build_model

    model = build_model(f"torchvision:{name}").eval()
    return ModelSpace(model, torch.randn(1, 3, 224, 224), importance="group_l2"), None


def _ms(args: argparse.Namespace, model: torch.nn.Module, space: ModelSpace) -> float:
    """``model``'s measured batch-1 latency in the bench's runtime (median of ``--runs`` calls)."""
    timed = measure_latency(model, space.example_inputs, runs=args.runs, runtime=args.runtime, threads=args.threads)
    return timed["measured_ms"]


def _plans(args: argparse.Namespace, space: ModelSpace, budget: float, multiple: int) -> dict[str, Plan]:
    plans = {ARMS[0]: space.global_plan(Budget(macs=f"{budget:.0%}"))}
    a_ms = _ms(args, space.apply(plans[ARMS[0]]), space)
    space.set_round_to(multiple)
    try:
        plans[ARMS[1]] = space.global_plan(Budget(macs=f"{budget:.0%}"))
        plans[ARMS[2]] = space.global_plan(Budget(latency=f"{a_ms:.4f}ms"))
        if args.methods:
            joint = space.allocate(Budget(macs=f"{budget:.0%}"), rank=True, method=args.methods.split(",")[0])
            plans[ARMS[3]] = joint.plan
    finally:
        space.set_round_to(1)
    return plans


Row = tuple[str, float, str, float]  # model, MAC budget, arm, the dense model's measured ms


def _row(args: argparse.Namespace, what: Row, space: ModelSpace, plan: Plan, p: Any) -> list[str]:
    """One table row: ``what`` is (model, budget, arm, the dense model's measured ms)."""
    name, b, arm, dense = what
    model = space.apply(plan)
    cost = space.cost(plan)
    measured = _ms(args, model, space)
    speedup, reduction = dense / measured, space.base_cost.macs / cost.macs
    acc = "—"
    if p is not None:
        val, _ = train_final(p, model.to(p.device), steps=args.final_steps, seed=0)
        acc = f"{100 * val:.2f}"
    predicted = cost.latency or float("nan")
    return [name, f"{b:.0%}", arm, f"{100 * cost.macs / space.base_cost.macs:.1f}%", f"{measured:.2f}",
            f"{speedup:.2f}×", f"{reduction:.2f}×", f"{speedup / reduction:.2f}", f"{predicted:.2f}",
            f"{100 * abs(predicted - measured) / measured:.1f}%", acc]  # fmt: skip


def main() -> None:
    import tempfile

    ap = parser(__doc__, budgets="0.5,0.3")
    ap.add_argument("--models", default="resnet50,mobilenet_v2,resnet20")
    ap.add_argument("--runs", type=int, default=25, help="timed end-to-end calls per model (median kept)")
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"), help="where latency is measured")
    ap.add_argument("--methods", default="", help="factorization methods whose chains the profile times; adds (d)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        for name in args.models.split(","):
            space, p = _space(args, name, Path(td))
            t = time.perf_counter()
            methods = [m for m in args.methods.split(",") if m]
            prof = profile_space(space, threads=args.threads, runtime=args.runtime, methods=methods)
            space.attach_profile(prof)
            err = max(abs(pr - m) / m for _, m, pr in prof.calibration)
            dense = _ms(args, space.model, space)
            notes.append(
                f"{name}: profile {time.perf_counter() - t:.0f} s, {len(prof.layers)} layers "
                f"({len(prof.factored)} with chains), dense {dense:.2f} ms, scale {prof.scale:.2f}, "
                f"multiple {prof.multiple}, calibration error <= {100 * err:.1f} %"
            )
            print(notes[-1], flush=True)
            for b in (float(x) for x in args.budgets.split(",")):
                for arm, plan in _plans(args, space, b, prof.multiple).items():
                    rows.append(_row(args, (name, b, arm, dense), space, plan, p))
                    print(" | ".join(rows[-1]), flush=True)
    print(f"\n# {args.runtime}, batch 1, {args.threads} threads; {machine()}; {time.perf_counter() - t_all:.0f} s")
    for n in notes:
        print(f"# {n}")
    print_table(["model", "MAC budget", "plan", "MACs", "measured ms", "speed-up", "MAC reduction",
                 "speed-up ÷ MAC reduction", "predicted ms", "prediction error", "val accuracy"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
