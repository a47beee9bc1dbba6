"""``prunetune inspect``: a model's prunable groups, factorizable layers, costs and the allocator's plan."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from search.cli._inspect_decoder import si
from spaces import PruneTuneError

if TYPE_CHECKING:
    from rich.console import Console

    from spaces import Budget, ModelSpace

__all__ = ["budget_arg", "cmd_inspect", "ratios_arg", "shape_arg"]


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input must be comma-separated positive integers like 1,3,224,224, got {text!r}"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"--input must be comma-separated positive integers like 1,3,224,224, got {text!r}"
        )
    return dims


def ratios_arg(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios must be comma-separated numbers in [0, 1), got {text!r}") from None
    bad = [v for v in vals if not 0.0 <= v < 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"--ratios must be in [0, 1), got {bad[0]!r}")
    return vals


def budget_arg(text: str) -> Budget:
    from spaces import Budget

    parts = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--budget must look like macs=40%,params=2M, got {text!r}")
        parts[key.strip()] = value.strip()
    try:
        return Budget.from_dict(parts)
    except (ValueError, PruneTuneError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from evaluators import build_model, load_weights
    from search.cli._inspect_decoder import cmd_inspect_decoder, is_decoder_spec
    from spaces import ModelSpace

    if is_decoder_spec(args.model):
        return cmd_inspect_decoder(args)
    model = build_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    space = ModelSpace(model, torch.randn(*args.input), importance=args.importance, round_to=args.round_to)
    console = Console()
    base = space.base_cost
    table = Table(title=f"{args.model}: {len(space.groups)} prunable groups (input {','.join(map(str, args.input))})")
    table.add_column("group id")
    table.add_column("layers", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("MACs share", justify="right")
    table.add_column("members")
    for g in space.groups:
        shown = ", ".join(g.layers[:3]) + (f", … (+{len(g.layers) - 3})" if len(g.layers) > 3 else "")
        table.add_row(g.id, str(len(g.layers)), str(g.channels), f"{space.macs_share(g.id):.1%}", shown)
    console.print(table)
    if space.excluded:
        ex = Table(title=f"{len(space.excluded)} groups excluded (never pruned)")
        ex.add_column("group id")
        ex.add_column("reason")
        for gid, why in space.excluded.items():
            ex.add_row(gid, why)
        console.print(ex)
    console.print(f"never pruned (classifier / ignored): {', '.join(space.ignored_layers) or 'none'}")
    costs = Table(title="cost (MACs of conv + linear layers for this input; params; parameter bytes)")
    for col in ("plan", "MACs", "MACs %", "params", "params %", "bytes"):
        costs.add_column(col, justify="right")
    rows: list[tuple[str, Any]] = [("base", base)]
    for r in args.ratios:
        rows.append((f"uniform {r:g}", space.cost(space.uniform_plan(r))))
    for name, c in rows:
        ratio = c.ratio(base)
        costs.add_row(
            name, si(c.macs), f"{ratio['macs']:.1%}", si(c.params), f"{ratio['params']:.1%}", si(c.bytes) + "B"
        )
    console.print(costs)
    _print_layers(console, space)
    if args.budget is not None:
        _print_allocation(console, space, args.budget)
    return 0


def _print_layers(console: Console, space: ModelSpace) -> None:
    from rich.table import Table

    base = space.base_cost.macs or 1
    table = Table(title=f"{len(space.layers)} factorizable layers (svd ranks; break-even = largest rank that saves)")
    for col in ("layer", "kind", "shape", "full rank", "break-even", "MACs share", "methods"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "methods") else "right")
    for g in space.layers:
        shape = f"{g.cout}x{g.cin}" + (f"x{g.kh}x{g.kw}" if g.kind == "conv" else "")
        table.add_row(
            g.name,
            g.kind,
            shape,
            str(g.full_ranks("svd")[0]),
            str(g.max_useful_rank("svd")),
            f"{g.dense_cost()[0] / base:.1%}",
            ", ".join(g.methods),
        )
    console.print(table)
    if space.not_factorizable:
        console.print(f"not factorizable: {len(space.not_factorizable)} layers (e.g. depthwise/grouped convolutions)")


def _print_allocation(console: Console, space: ModelSpace, budget: Budget) -> None:
    from rich.table import Table

    info = space.allocate(budget)
    plan = info.plan
    cost = space.cost(plan)
    ratio = cost.ratio(space.base_cost)
    title = (
        f"allocator plan for {budget}: MACs {ratio['macs']:.1%}, params {ratio['params']:.1%} "
        f"({info.solver}, {info.seconds:.2f}s, {info.rounds} rounds)"
    )
    table = Table(title=title)
    table.add_column("group / layer")
    table.add_column("channels kept", justify="right")
    table.add_column("svd rank", justify="right")
    keep = space.keep_counts(plan)
    for g, k in zip(space.groups, keep, strict=True):
        if k < g.channels:
            table.add_row(g.id, f"{k}/{g.channels}", "")
    for name, (_, ranks) in space.resolved_ranks(plan).items():
        table.add_row(name, "", str(ranks[0]))
    console.print(table)
    console.print(f"plan: {plan.to_json()}", soft_wrap=True, markup=False)
