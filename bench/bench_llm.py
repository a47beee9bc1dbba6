"""Language models under a memory budget: the one-rule pruners, each recovered by distillation, on held-out text.

    .venv/bin/python bench/bench_llm.py                      # 50 % and 30 % of the memory, seeds 0,1,2
    .venv/bin/python bench/bench_llm.py --budgets 0.5 --seeds 0
    .venv/bin/python bench/bench_llm.py --smoke              # CI's size: seconds

No pretrained language model exists here, so the teacher is trained on this
machine: a Llama-style model (``--layers`` layers of width ``--width``,
grouped-query attention with ``--heads`` query and ``--kv-heads`` key heads, MLP
width ``--mlp``) on the ``train`` split of the standard library's source, byte
tokens (:mod:`evaluators._text`), for ``--teacher-steps`` steps, cached under
``artifacts/`` (a ``save_pretrained`` directory named by a digest of what made it).

A **memory budget** is weights plus the KV cache at ``--serve-context`` tokens
and ``--serve-batch`` sequences (float32), a share of the teacher's. Every arm
prunes the teacher with the same activation-aware importance (Wanda-sp scores on
the ``calibration`` split) and its own rule, exactly onto the budget
(:class:`spaces.decoder.DecoderSpace`):

(a) **uniform**: one prune ratio for every layer's MLP and key-value groups
    (LLM-Pruner's setting), the largest that fits;
(b) **global**: structures ranked across all layers by importance per byte, the
    least important removed first (FLAP's and Wanda-sp's allocation);
(c) **depth**: whole layers dropped, the least influential first (ShortGPT's
    block influence; Minitron's depth axis);
(s) **PruneTune's search**: a ``task = "decoder"`` study per seed
    (:mod:`search.tasks._decoder_study`, ``--search-candidates`` candidates, each
    recovered for ``--search-steps`` distilled steps and scored by perplexity on
    the ``validation`` split, in a SQLite store in a temp folder, the best
    ``--rescore-top`` recovered again for ``--recovery-steps``); its pick is the
    lowest validation perplexity among those;
(d) with ``--bits 8,4``, **uniform at b bits**: every layer's projections at
    ``b`` bits (weight-only, per output channel, the bits dimension) and one
    prune ratio fitted onto what remains of the budget, for each ``b``: what one
    line of a weight-only quantizer plus uniform pruning gives;
(q) with ``--bits``, **PruneTune's search over bits too**: the same study with
    ``space.bits`` set, so each layer's width may be float32 or any of ``b``.

``--arms`` picks which run (letters, default all that apply).

Then every arm gets the same recovery: ``--recovery-steps`` steps on the
``train`` split, distilled from the teacher (KL on logits, as Minitron;
``--kd-weight``), the seed's data order; (b) also recovers on the labels alone
(plain next-token loss) for the comparison, and so does (s). The figure is **perplexity on the
``heldout`` split** (never read before), mean ± std over seeds; beside it the
memory, and tokens per second measured in torch (batch 1): prefill of
``--context`` tokens, and decode of 32 tokens with the cache.

The held-out split is read only for the figures: the search selects on the
validation split, the rules on nothing but the calibration split.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _shared import machine, parse, print_table, temp_dir

from evaluators._lm import cached_teacher, recover, tokens_per_second
from evaluators._text import perplexity, stdlib_text
from spaces import Plan, PlanError
from spaces.decoder import DecoderSpace

SMOKE = {
    "budgets": "0.7",
    "seeds": "0",
    "layers": 4,
    "width": 32,
    "mlp": 64,
    "heads": 4,
    "kv_heads": 2,
    "teacher_steps": 10,
    "recovery_steps": 3,
    "context": 32,
    "serve_context": 64,
    "eval_windows": 4,
    "max_bytes": 50_000,
    "search_candidates": 4,
    "search_steps": 2,
    "rescore_top": 1,
}


def args_() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0.5,0.3", help="memory budgets, shares of the teacher's weights + KV cache")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--mlp", type=int, default=384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--recovery-steps", type=int, default=200)
    ap.add_argument("--kd-weight", type=float, default=1.0, help="distillation weight of the recovery")
    ap.add_argument("--context", type=int, default=128, help="tokens per training and evaluation window")
    ap.add_argument("--serve-context", type=int, default=1024, help="the KV cache's context in the budget")
    ap.add_argument("--serve-batch", type=int, default=1)
    ap.add_argument("--eval-windows", type=int, default=64, help="held-out windows the perplexity reads")
    ap.add_argument("--max-bytes", type=int, default=None, help="bytes of text per split (default: all)")
    ap.add_argument("--search-candidates", type=int, default=16, help="candidates of each search (0: no search arm)")
    ap.add_argument("--search-steps", type=int, default=40, help="distilled recovery steps per searched candidate")
    ap.add_argument("--rescore-top", type=int, default=3, help="the search's best, recovered again for its pick")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bits", default="", help="weight bits for arms (d) and (q), e.g. 8,4 (default: none)")
    ap.add_argument("--arms", default="abcsdq", help="which arms run, by letter (d and q need --bits)")
    return parse(ap, SMOKE)


def teacher(args: argparse.Namespace, text: Any, cache: Path) -> torch.nn.Module:
    config = {
        "num_hidden_layers": args.layers,
        "hidden_size": args.width,
        "intermediate_size": args.mlp,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
    }
    return cached_teacher(cache, "llama", text.train, steps=args.teacher_steps, **config)


def arms(space: DecoderSpace, limit: int, calibration: torch.Tensor) -> dict[str, Plan | str]:
    """Each rule's plan at ``limit``, or why the rule cannot reach it (depth cannot go below one layer)."""
    rules = {
        "(a) uniform": lambda: space.fit(space.uniform_plan(0.0), limit),
        "(b) global": lambda: space.global_plan(limit),
        "(c) depth": lambda: space.depth_plan(limit, calibration),
    }
    out: dict[str, Plan | str] = {}
    for name, rule in rules.items():
        try:
            out[name] = rule()
        except PlanError as exc:
            out[name] = str(exc)
    return out


def bit_arms(space: DecoderSpace, limit: int, bits: list[int]) -> dict[str, Plan | str]:
    """(d): every layer at ``b`` bits, one prune ratio fitted onto the budget, for each ``b`` of ``bits``."""
    layers = sorted({g.rsplit(".", 1)[0] for g in space.groups})
    out: dict[str, Plan | str] = {}
    for b in bits:
        try:
            out[f"(d) uniform at {b} bits"] = space.fit(Plan(bits=dict.fromkeys(layers, b)), limit)
        except PlanError as exc:
            out[f"(d) uniform at {b} bits"] = str(exc)
    return out


def searched_plan(args: argparse.Namespace, share: float, seed: int, cache: Path, bits: list[int]) -> Plan:
    """The pick of a ``task = "decoder"`` study at ``share`` of the memory (seed ``seed``; with ``bits``, layers
    may take those weight bits), in a temp store."""
    from search.tasks._decoder_config import DecoderConfig
    from search.tasks._decoder_study import DecoderStudy

    folder = temp_dir()
    cfg = DecoderConfig.model_validate({
        "model": {"teacher": {"layers": args.layers, "width": args.width, "mlp": args.mlp, "heads": args.heads,
                              "kv_heads": args.kv_heads, "steps": args.teacher_steps}},
        "data": {"max_bytes": args.max_bytes},
        "space": {"bits": bits},
        "budget": {"memory": share, "context": args.serve_context, "batch": args.serve_batch},
        "evaluate": {"recovery_steps": args.search_steps, "kd_weight": args.kd_weight, "context": args.context,
                     "seed": seed, "rescore_top": args.rescore_top, "rescore_steps": args.recovery_steps},
        "search": {"study": f"llm-{share}-{seed}-{len(bits)}", "candidates": args.search_candidates, "seed": seed,
                   "artifacts_dir": str(cache)},
        "storage": {"url": f"sqlite:///{folder / 'study.db'}"},
    })  # fmt: skip
    study = DecoderStudy(cfg).prepare()
    study.run()
    best = study.pick()
    assert best is not None
    return Plan.from_json(best.plan)


def run_budget(args: argparse.Namespace, share: float, seeds: list[int], teach: Any, text: Any) -> list[list[str]]:
    space = DecoderSpace(teach, context=args.serve_context, batch=args.serve_batch)
    # the scores every arm keeps structures by, the study's own (space.calibration_windows of evaluate.context)
    space.calibrate(text.calibration, windows=128, length=args.context)
    limit = space.memory_limit(share)
    bits = [int(b) for b in args.bits.split(",") if b]
    plans = {n: p for n, p in {**arms(space, limit, text.calibration), **bit_arms(space, limit, bits)}.items()
             if n[1] in args.arms}  # fmt: skip
    rows = [[f"{share:.0%}", name, "—", f"cannot reach the budget: {why}", "", ""] for name, why in plans.items()
            if isinstance(why, str)]  # fmt: skip
    runs = [(n, [p] * len(seeds)) for n, p in plans.items() if isinstance(p, Plan)]
    if isinstance(glob := plans.get("(b) global"), Plan):
        runs.append(("(b) global, plain recovery", [glob] * len(seeds)))
    if args.search_candidates and "s" in args.arms:  # one study per seed: the search's own spread is in the figure
        picks = [searched_plan(args, share, seed, args.cache, []) for seed in seeds]
        runs += [("(s) PruneTune search", picks), ("(s) PruneTune search, plain recovery", picks)]
    if args.search_candidates and bits and "q" in args.arms:
        picks = [searched_plan(args, share, seed, args.cache, bits) for seed in seeds]
        runs.append((f"(q) PruneTune search, bits {'/'.join(map(str, bits))}", picks))
    for name, per_seed in runs:
        ppls = [recovered(args, space, plan, seed, teach, text, plain="plain" in name)
                for plan, seed in zip(per_seed, seeds, strict=True)]  # fmt: skip
        pre, dec = tokens_per_second(space.apply(per_seed[-1]), args.context)  # speed needs no trained weights
        mem = statistics.mean(space.cost(p).memory_bytes for p in per_seed) / space.dense.memory_bytes
        spread = statistics.stdev(ppls) if len(ppls) > 1 else 0.0
        rows.append([f"{share:.0%}", name, f"{mem:.1%}", f"{statistics.mean(ppls):.3f} ± {spread:.3f}",
                     f"{pre:.0f}", f"{dec:.0f}"])  # fmt: skip
    return rows


def recovered(
    args: argparse.Namespace, space: DecoderSpace, plan: Plan, seed: int, teach: Any, text: Any, *, plain: bool
) -> float:
    """Held-out perplexity of ``plan`` after the bench's recovery (distilled unless ``plain``), seed ``seed``."""
    student = space.apply(plan)
    kd = 0.0 if plain else args.kd_weight
    recover(student, text.train, steps=args.recovery_steps, context=args.context, teacher=teach,
            kd_weight=kd, seed=seed, lr=1e-3)  # fmt: skip
    return perplexity(student, text.heldout, context=args.context, max_windows=args.eval_windows)


def main() -> None:
    args = args_()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    text = stdlib_text(max_bytes=args.max_bytes)
    cache = args.cache = temp_dir() if args.smoke else Path("artifacts")
    teach = teacher(args, text, cache)
    seeds = [int(s) for s in args.seeds.split(",")]
    dense = perplexity(teach, text.heldout, context=args.context, max_windows=args.eval_windows)
    rows = []
    for share in (float(b) for b in args.budgets.split(",")):
        rows += run_budget(args, share, seeds, teach, text)
    dense_speed = tokens_per_second(teach, args.context)  # timed last, as warm as the others
    rows.insert(
        0, ["100%", "teacher (dense)", "100.0%", f"{dense:.3f}", f"{dense_speed[0]:.0f}", f"{dense_speed[1]:.0f}"]
    )
    print(
        f"\n# teacher: Llama-style, {args.layers} layers, width {args.width}, MLP {args.mlp}, {args.heads}/"
        f"{args.kv_heads} heads, {args.teacher_steps} steps on the standard library's source (bytes); memory = "
        f"weights + KV cache at {args.serve_context} tokens x {args.serve_batch}; recovery {args.recovery_steps} "
        f"steps (distillation weight {args.kd_weight}); held-out perplexity over {args.eval_windows} windows of "
        f"{args.context}, seeds {seeds}; {machine()}; {time.perf_counter() - t0:.0f} s\n"
    )
    print_table(["memory budget", "method", "memory", "held-out perplexity", "prefill tok/s", "decode tok/s"], rows)


if __name__ == "__main__":
    main()
