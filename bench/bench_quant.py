"""Bits against channels under a memory budget: uniform int8, pruning only and the joint search, finalized alike.

    .venv/bin/python bench/bench_quant.py                          # Fashion-MNIST, 25 % and 10 % bytes, seeds 0,1,2
    .venv/bin/python bench/bench_quant.py --budgets 0.1 --seeds 0  # one budget, one seed
    .venv/bin/python bench/bench_quant.py --smoke                  # digits, one budget, a few steps (what CI runs)

One ResNet-20 is trained on the **train** split (cached). Each budget is a
``bytes`` limit, a fraction of the float32 model's parameter bytes (no MAC
limit). Every arm gets exactly the same final treatment —
:func:`search.train_final`: BN recalibration, ``--final-steps`` fine-tune steps
distilled from the original, the seed's data order; a quantized model is
fine-tuned through its fake quantizers — and is measured on the **test**
split, which nothing selects on:

(a) **uniform int8**: every conv and linear layer's weights and inputs at 8
    bits (post-training quantization, then the same fine-tune as every arm);
    where int8 alone is above the budget (int8 is a quarter of float32, plus a
    scale and a zero point per output channel), ``fit`` prunes it uniformly
    onto the budget, bits held;
(b) **pruning only**: a ``prunetune`` study with ``space.quantize = "none"``
    (today's search: channels are the only way to bytes);
(c) **the joint search**: the same study with ``space.quantize =
    "weights+activations"`` (channels, per-layer 8 or 4 bits through the
    sampler's share-at-4-bits knob, 8-bit inputs).

The dense float32 model's own test accuracy is listed beside them (the 25 %
target: within half a point of it). Both studies use the bench's rungs, ``search.floor = "cap"`` and the best
``--rescore-top`` re-scored, and pick with :func:`storage.best_within_cap`.

The second table is seed 0's picks exported to ONNX (the float32 model, and
ONNX Runtime's int8 model of it, made by the export's own step, as ``prunetune
export --format onnx --int8`` writes them): batch-1 latency on this CPU,
median and interquartile range over ``--runs`` runs, against the float32 base
model in torch and in ONNX Runtime, and the int8 model's top-1 agreement with
the model it was made from on the validation split (the float32 base model's:
post-training quantization). 4-bit weights are stored packed but computed by
dequantizing: they count toward memory only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _shared import (  # bench/, beside this script
    SMOKE,
    add_search_args,
    machine,
    parse_search_args,
    parser,
    print_table,
    study_overrides,
)
from torch import nn

from evaluators import Context, evaluate_accuracy
from search import Search, load_config
from search.operations._finalize import train_final
from search.operations._onnx import agreement, quantize_onnx
from spaces import Budget, Plan, Status, dequantized, measure_cost, ort_session, summarize, time_calls, write_onnx
from spaces.dimensions import Sampled, dimension, role_of
from storage import best_within_cap

DENSE = "the float32 model itself (not compressed, not fine-tuned again)"
STUDIES = {
    "(b) pruning only": "none",
    "(c) joint search (pruning + bits)": "weights+activations",
}


def study(args: argparse.Namespace, tmp: Path, budget: float, seed: int, quantize: str) -> Search:
    overrides = {
        **study_overrides(args, tmp, f"q-{quantize}-{budget}-{seed}"),
        "budget.macs": None,
        "budget.bytes": f"{budget:.0%}",
        "space.bits.activations": quantize == "weights+activations",
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
        "evaluate.rescore_top": args.rescore_top,
        "search.candidates": args.candidates,
        "search.floor": "cap",
        "search.seed": seed,
    }
    if quantize == "none":  # no [space.bits] table: channels only
        del overrides["space.bits.activations"]
    return Search(load_config(None, overrides)).prepare()


def uniform_int8(p: Any, b: float) -> nn.Module:
    """Arm (a): every layer at 8 bits, weights and inputs, pruned uniformly by ``fit`` only if that is above ``b``."""
    space = p.space
    bits = role_of(dimension("bits"), Sampled)
    assert bits is not None
    entries = bits.seed_entries(space, {"quantize": "weights+activations"})
    plan = Plan(bits=dict(entries["bits"]), act_bits=dict(entries["act_bits"]))
    return space.apply(space.fit(plan, Budget(bytes=f"{b:.0%}")))


def run_seed(args: argparse.Namespace, b: float, seed: int, log: dict[str, Any]) -> None:
    """One budget and seed: both studies, then every arm finalized and tested; appends to ``log``."""
    with tempfile.TemporaryDirectory() as td:
        picks: dict[str, nn.Module] = {}
        p = None
        for name, quantize in STUDIES.items():
            s = study(args, Path(td), b, seed, quantize)
            s.run()
            p = s.prepared
            rows = [r for r in p.store.candidates(p.study_id) if r.status is Status.COMPLETE]
            best = best_within_cap(rows, s.cfg.evaluate.score)
            if best is None:
                raise RuntimeError(f"{name}: the study finished no candidate")
            picks[name] = p.space.apply(Plan.from_json(best.plan))
        assert p is not None
        models = {"(a) uniform int8": uniform_int8(p, b), **picks}
        example = p.data.example_inputs(1)
        ctx = Context(data=p.data, device=p.device, batch_size=args.batch_size)
        dense = evaluate_accuracy(p.base_model, ctx, split="test")[0]  # the target at 25 %: within 0.5 of it
        for key, value in (("accs", dense), ("bytes", 1.0), ("macs", 1.0)):
            log[key].setdefault(DENSE, []).append(value)
        for name, m in models.items():
            _, test = train_final(p, m.to(p.device), steps=args.final_steps, seed=seed)
            cost = measure_cost(m.cpu(), example)
            log["accs"].setdefault(name, []).append(float(test or 0.0))
            log["bytes"].setdefault(name, []).append(cost.bytes / p.base_cost.bytes)
            log["macs"].setdefault(name, []).append(cost.macs / p.base_cost.macs)
        if seed == 0 and args.runs:
            log["latency"] = latency(args, p, models, Path(td), b)
    line = ", ".join(f"{k} {v[-1]:.4f} ({100 * log['bytes'][k][-1]:.1f}% bytes)" for k, v in log["accs"].items())
    print(f"bytes budget {b:.0%} seed {seed}: {line}", flush=True)


def latency(args: argparse.Namespace, p: Any, models: dict[str, nn.Module], tmp: Path, b: float) -> list[list[str]]:
    """Batch-1 latency rows (torch, ONNX Runtime float32 and int8) for the base model and each arm's model.

    Each model goes through the export's own steps (:func:`spaces.write_onnx` of its dequantized copy,
    :func:`search.operations._onnx.quantize_onnx`, the top-1 agreement of the int8 model with it on validation).
    """
    threads = args.threads
    x = p.data.example_inputs(1).cpu()
    rows: list[list[str]] = []
    for name, m in {"float32 base model": p.base_model, **models}.items():
        m = m.cpu().eval()
        d = tmp / f"onnx-{len(rows)}"
        d.mkdir()
        flat, layers = dequantized(m)
        write_onnx(flat, x, d / "model.onnx")
        quantize_onnx(d / "model.onnx", d / "int8.onnx", layers, p.data)
        fp32, int8 = ort_session(d / "model.onnx", threads), ort_session(d / "int8.onnx", threads)
        agreed = agreement(m, {"int8": int8}, p.data, tolerance=0.0, max_samples=args.max_val)["int8"]
        feed = {"x": x.numpy()}
        runs: dict[str, Callable[[], Any]] = {
            "torch": partial(torch.no_grad()(m), x),
            "ORT fp32": partial(fp32.run, None, feed),
            "ORT int8": partial(int8.run, None, feed),
        }
        times = {k: summarize(time_calls(f, runs=args.runs, warmup=5)) for k, f in runs.items()}
        cells = [f"{v['median_ms']:.3f} ± {v['iqr_ms']:.3f}" for v in times.values()]
        speedup = times["ORT fp32"]["median_ms"] / times["ORT int8"]["median_ms"]
        size = (d / "int8.onnx").stat().st_size
        rows.append([f"{b:.0%}", name, *cells, f"{speedup:.2f}×", str(size), f"{100 * agreed['top1']:.2f}%"])
    return rows


def table_rows(b: float, log: dict[str, Any]) -> list[list[str]]:
    """Mean ± std per arm, and the gain over the better of (a) and (b)."""
    accs = log["accs"]
    better = max(statistics.mean(v) for k, v in accs.items() if k.startswith(("(a)", "(b)")))
    rows = []
    for name, vals in accs.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(
            [f"{b:.0%}", name, f"{100 * statistics.mean(log['bytes'][name]):.1f}%",
             f"{100 * statistics.mean(log['macs'][name]):.1f}%", f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}",
             f"{100 * (statistics.mean(vals) - better):+.2f}"]
        )  # fmt: skip
    return rows


def main() -> None:
    ap = parser(__doc__, budgets="0.25,0.1")
    add_search_args(ap)
    ap.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per runtime (0: no latency table)")
    args, seeds = parse_search_args(ap, {**SMOKE, "budgets": "0.25", "runs": 5})
    where = machine()
    rows: list[list[str]] = []
    lat: list[list[str]] = []
    t_all = time.perf_counter()
    for b in [float(x) for x in args.budgets.split(",")]:
        log: dict[str, Any] = {"accs": {}, "bytes": {}, "macs": {}, "latency": []}
        for seed in seeds:
            run_seed(args, b, seed, log)
        rows += table_rows(b, log)
        lat += log["latency"]
    print(
        f"\n# {args.data} ResNet-20 under bytes budgets (fractions of the float32 weights); test accuracy after BN "
        f"recalibration + {args.final_steps} distilled fine-tune steps (through the fake quantizers), seeds {seeds} "
        f"(mean ± std, %); searches: {args.candidates} candidates, rungs {args.rungs}; {where}; "
        f"{time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["bytes budget", "method", "bytes", "MACs", "test accuracy", "vs better of (a), (b)"], rows)
    if lat:
        print(f"\nbatch-1 latency, ms (median ± interquartile range over {args.runs} runs), {args.threads} threads\n")
        print_table(
            [
                "bytes budget",
                "model (seed 0)",
                "torch",
                "ORT fp32",
                "ORT int8",
                "int8 speedup",
                "int8 file",
                "agreement",
            ],
            lat,
        )


if __name__ == "__main__":
    main()
