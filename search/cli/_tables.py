"""The CLI's tables: the Pareto front as one line per candidate, fitted to the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from storage import best_within_cap, plan_summary

if TYPE_CHECKING:
    from storage import CandidateRow

__all__ = ["front_table", "pct"]


def pct(v: float | None, base: float | None) -> str:
    return f"{100 * v / base:.1f}%" if v is not None and base else "-"


def front_table(title: str, rows: Sequence[CandidateRow], base_cost: dict[str, Any]) -> Table:
    """The front as a table that fits the terminal: one line per candidate.

    Columns with no value in any row (``test acc`` before ``finalize``,
    ``latency ms`` when nothing was measured) are left out, and the plan
    summary is cut with an ellipsis to the width that is left; the whole plan
    is printed by ``prunetune front --plans`` and in the report's CSV.
    """
    best = best_within_cap(rows)
    cells = {
        "trial": [f"{r.trial_number} *" if best is not None and r.id == best.id else str(r.trial_number) for r in rows],
        "val acc": [f"{r.accuracy:.4f}" if r.accuracy is not None else "-" for r in rows],
        "rung": ["-" if r.rungs is None else f"{r.rung} ({r.rungs[-1][0]} steps)" for r in rows],
        "test acc": [f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-" for r in rows],
        "MACs %": [pct(r.macs, base_cost.get("macs")) for r in rows],
        "params %": [pct(r.params, base_cost.get("params")) for r in rows],
        "latency ms": [f"{r.latency:.2f}" if r.latency is not None else "-" for r in rows],
    }
    shown = {col: values for col, values in cells.items() if col == "trial" or any(v != "-" for v in values)}
    caption = (
        "val: validation accuracy (selected on); test: after `prunetune finalize`; "
        "whole plans: `prunetune front --plans`"
    )
    if best is not None:
        caption = f"* the best within the budget's cap (at the highest rung); {caption}"
    table = Table(title=title, caption=caption)
    for col in shown:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("plan", justify="left", ratio=1, min_width=12)  # the only column that gives way
    for i, r in enumerate(rows):
        plan = Text(plan_summary(r.plan), no_wrap=True, overflow="ellipsis")
        table.add_row(*(values[i] for values in shown.values()), plan)
    return table
