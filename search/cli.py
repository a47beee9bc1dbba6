"""The ``prunetune`` command line.

Heavy imports (torch, torch-pruning, fvcore) happen inside the commands, so
``prunetune --help`` answers at once. Bad input of any kind ends with one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


class UsageError(Exception):
    """A bad command-line value (exit code 2)."""


def _shape(text: str) -> tuple[int, ...]:
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


def _ratios(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios must be comma-separated numbers in [0, 1), got {text!r}") from None
    bad = [v for v in vals if not 0.0 <= v < 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"--ratios must be in [0, 1), got {bad[0]!r}")
    return vals


def _budget(text: str) -> Any:
    from spaces import Budget

    parts = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--budget must look like macs=40%,params=2M, got {text!r}")
        parts[key.strip()] = value.strip()
    try:
        return Budget.from_dict(parts)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _si(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from evaluators import build_model, load_weights
    from spaces import ModelSpace

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
            name, _si(c.macs), f"{ratio['macs']:.1%}", _si(c.params), f"{ratio['params']:.1%}", _si(c.bytes) + "B"
        )
    console.print(costs)
    _print_layers(console, space)
    if args.budget is not None:
        _print_allocation(console, space, args.budget)
    return 0


def _print_layers(console: Any, space: Any) -> None:
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


def _print_allocation(console: Any, space: Any, budget: Any) -> None:
    from rich.table import Table

    plan = space.allocate(budget)
    info = space.last_allocation
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
    factors = space._factors(plan, keep)
    for name, (_, ranks) in factors.items():
        table.add_row(name, "", str(ranks[0]))
    console.print(table)
    console.print(f"plan: {plan.to_json()}", soft_wrap=True, markup=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunetune", description="Automated compression search for PyTorch CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="show a model's prunable groups and costs")
    ins.add_argument("--model", required=True, help="zoo:<name>, torchvision:<name> or package.module:factory")
    ins.add_argument("--weights", help="a .safetensors file or a weights-only torch file")
    ins.add_argument("--input", type=_shape, default=(1, 3, 224, 224), help="example input shape (default 1,3,224,224)")
    ins.add_argument(
        "--ratios", type=_ratios, default=[0.3, 0.5], help="uniform prune ratios to cost (default 0.3,0.5)"
    )
    ins.add_argument("--importance", choices=("l1", "l2", "bn_scale"), default="l1")
    ins.add_argument("--round-to", type=int, default=1)
    ins.add_argument(
        "--budget",
        type=_budget,
        help="show the allocator's plan for this budget, e.g. macs=40%%,params=50%%,bytes=8MB",
    )
    ins.set_defaults(func=_cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from spaces import PruneTuneError
    from spaces._errors import first_line

    try:
        return int(args.func(args))
    except (PruneTuneError, ValueError, TypeError, UsageError) as exc:
        message = first_line(exc)
        print(f"prunetune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
