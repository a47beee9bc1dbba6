"""``prunetune inspect --model hf:PATH``: a language model's layers, exact costs and the one-rule plans at a budget.

A language model's structures come from its family's layout (:mod:`spaces.decoder`):
per layer, the MLP's intermediate channels and the attention's key-value groups.
The cost table gives parameters, weight bytes, the KV cache at ``--context``
tokens and ``--batch`` sequences, memory (weights plus cache) and MACs per token
for prefill and decode, for the dense model and uniform prune ratios; with
``--memory 50%`` it adds the plans of the one-rule pruners at that budget
(uniform, global by importance per byte, depth by block influence on the
standard library's calibration text). With ``--measure`` each plan is also
built and timed on this machine (:func:`evaluators._lm.tokens_per_second`:
torch, batch 1, prefill of ``--context`` tokens and decode of 32 with the
cache): measured, never derived from the MACs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from spaces import Plan
    from spaces.decoder import DecoderSpace

__all__ = ["cmd_inspect_decoder", "is_decoder_spec", "positive_int", "si"]

MEASURED_NEW = 32  # tokens decoded with the cache by --measure


def is_decoder_spec(spec: str) -> bool:
    return spec.startswith(("hf:", "hf-tiny:"))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}")
    return value


def si(n: float) -> str:
    """``n`` with an SI prefix (K, M, G), as both inspect commands print costs."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def cmd_inspect_decoder(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from evaluators import build_model, load_weights
    from spaces import Plan
    from spaces.decoder import DecoderSpace

    model = build_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    space = DecoderSpace(model, context=args.context, batch=args.batch)
    limit = space.memory_limit(args.memory) if args.memory else None  # a bad budget fails before any output
    if args.measure:
        _check_positions(model, args.context)
    console = Console(width=max(Console().width, 120))  # the cost table's columns
    layers = space.layout.layers(model)
    kind = "decoder" if space.layout.causal else "encoder"
    table = Table(title=f"{args.model}: {len(layers)} {kind} layers ({space.layout.name} layout)")
    for col in ("layer", "MLP channels", "query heads", "key-value groups", "head width"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    path = space.layout.layers_path(model)
    for i, layer in enumerate(layers):
        a, m = space.layout.attention(layer), space.layout.mlp(layer)
        table.add_row(f"{path}.{i}", str(m.width), str(a.n_heads), str(a.n_kv), str(a.head_dim))
    console.print(table)
    rows: list[tuple[str, Plan | str]] = [("dense", Plan())]
    rows += [(f"uniform {r:g}", space.uniform_plan(r)) for r in args.ratios]
    if limit is not None:
        rows += _one_rule_rows(space, limit)
    _print_costs(console, space, rows, limit, model if args.measure else None)
    return 0


def _check_positions(model: nn.Module, context: int) -> None:
    """``--measure`` times ``context`` + 32 positions: a model built for fewer is a one-line usage error."""
    from spaces import UsageError

    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and context + MEASURED_NEW > int(limit):
        raise UsageError(
            f"--measure times --context {context} tokens and {MEASURED_NEW} more, but the model has "
            f"{limit} positions: use --context {int(limit) - MEASURED_NEW} or less"
        )


def _one_rule_rows(space: DecoderSpace, limit: int) -> list[tuple[str, Plan | str]]:
    from evaluators._text import stdlib_text
    from spaces import PlanError

    calibration = stdlib_text(max_bytes=space.context * 8 + 1).calibration
    rules = {
        "uniform, fitted": lambda: space.fit(space.uniform_plan(0.0), limit),
        "global": lambda: space.global_plan(limit),
        "depth": lambda: space.depth_plan(limit, calibration),
    }
    rows: list[tuple[str, Plan | str]] = []
    for name, rule in rules.items():
        try:
            rows.append((name, rule()))
        except PlanError as exc:
            rows.append((name, str(exc)))
    return rows


def _print_costs(
    console: Console,
    space: DecoderSpace,
    rows: list[tuple[str, Plan | str]],
    limit: int | None,
    model: nn.Module | None,
) -> None:
    """The cost table of ``rows`` (a plan, or why a rule found none); with ``model``, each plan measured too."""
    from rich.table import Table

    dense = space.dense
    title = f"cost (KV cache at {space.context} tokens x {space.batch}; MACs per token, batch 1)"
    if limit is not None:
        title += f"; one-rule plans at a memory budget of {si(limit)}B"
    if model is not None:
        title += f"; measured here: prefill of {space.context} tokens, decode of 32 with the cache, batch 1"
    columns = ["plan", "params", "weights", "KV cache", "memory", "memory %", "prefill MACs", "decode MACs"]
    columns += ["prefill tok/s", "decode tok/s"] if model is not None else []
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == "plan" else "right")
    notes = []
    for name, plan in rows:
        if isinstance(plan, str):
            table.add_row(name, *["—"] * (len(columns) - 1))
            notes.append(f"{name}: {plan}")
            continue
        c = space.cost(plan)
        cells = [si(c.params), si(c.weight_bytes) + "B", si(c.kv_bytes) + "B", si(c.memory_bytes) + "B"]
        cells += [f"{c.memory_bytes / dense.memory_bytes:.1%}", si(c.prefill_macs_per_token), si(c.decode_macs)]
        if model is not None:
            cells += [f"{v:,.0f}" if v == v else "—" for v in _measured(model, plan, space.context)]  # NaN: none
        table.add_row(name, *cells)
    console.print(table)
    for line in notes:
        console.print(line)


def _measured(model: nn.Module, plan: Plan, context: int) -> tuple[float, float]:
    """Prefill and decode tokens per second of ``plan`` applied to ``model``, measured on this machine."""
    from evaluators._lm import tokens_per_second
    from spaces.decoder import apply_decoder_plan

    return tokens_per_second(apply_decoder_plan(model, plan), context, MEASURED_NEW)
