"""The CLI's tables: the Pareto front as one line per candidate, fitted to the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from storage import Pick, candidate_view, over_cap_note, pick_within_cap

if TYPE_CHECKING:
    from storage import CandidateRow

__all__ = ["front_table", "pct"]


def pct(v: float | None, base: float | None) -> str:
    return f"{100 * v / base:.1f}%" if v is not None and base else "-"


def _mark(view: dict[str, Any], pick: Pick | None) -> str:
    """The trial's cell: ``*`` the pick, ``≈`` a candidate within the best-scored one's noise."""
    if pick is not None and view["candidate"] == pick.row.id:
        return f"{view['trial']} *"
    if pick is not None and (view["candidate"] in pick.tied or view["candidate"] == pick.best.id):
        return f"{view['trial']} ≈"
    return str(view["trial"])


def _caption(pick: Pick | None, measured: bool) -> str:
    caption = (
        "val: validation accuracy (selected on); test: after `prunetune finalize`; "
        "whole plans: `prunetune front --plans`"
    )
    if measured:
        caption += "; latency: the device profile's prediction, measured: end to end after the run"
    if pick is None:
        return caption
    if pick.cheaper:
        return (
            f"* the cheapest plan tied with the best-scored (trial {pick.best.trial_number}, ≈): no winner inside "
            f"the noise (under 2 paired standard errors on the same images); ≈ tied with it; {caption}"
        )
    if pick.tied:
        caption = f"≈ tied with * (its lead is within 2 paired standard errors on the same images); {caption}"
    return f"* the best within the budget's cap (at the highest rung); {caption}"


def front_table(
    title: str,
    rows: Sequence[CandidateRow],
    base_cost: dict[str, Any],
    score: str = "accuracy",
    over: Sequence[CandidateRow] = (),
) -> Table:
    """The front as a table that fits the terminal: one line per candidate.

    Columns with no value in any row (``test acc`` before ``finalize``,
    ``latency ms`` when nothing was measured) are left out, as is ``bytes %``
    when it equals ``params %`` (no quantized weights). The plan summary is
    cut with an ellipsis to the width that is left; the whole plan is printed
    by ``prunetune front --plans`` and in the report's CSV. ``over``: the
    candidates measured over the latency cap (``StudyStore.over_cap``), listed
    below the front under a line that says so, never starred. The star is the study's pick
    (:func:`storage.pick_within_cap`): the best-scored, or the cheapest plan tied with it. A candidate within
    the best-scored one's noise (its paired difference on the same validation images is under two standard
    errors) is marked ``≈``: the pick did not beat it, whatever its digits say.
    """
    pick = pick_within_cap(rows, score)  # starred: the study's pick (its evaluate.score)
    views = [candidate_view(r, base_cost, ()) for r in [*rows, *over]]

    def num(key: str, fmt: str, unit: str = "") -> list[str]:
        return ["-" if v[key] is None else format(v[key], fmt) + unit for v in views]

    cells = {
        "trial": [_mark(v, pick) for v in views],
        "val acc": num("accuracy", ".4f"),
        "rung": ["-" if v["rung_steps"] is None else f"{v['rung']} ({v['rung_steps']} steps)" for v in views],
        "test acc": num("test_accuracy", ".4f"),
        "MACs %": num("macs_pct", ".1f", "%"),
        "params %": num("params_pct", ".1f", "%"),
        "bytes %": num("bytes_pct", ".1f", "%"),
        "latency ms": num("latency_ms", ".2f"),
        "measured ms": num("measured_ms", ".2f"),
    }
    if cells["bytes %"] == cells["params %"]:
        del cells["bytes %"]  # every weight in float32: the bytes say what the parameters say
    shown = {col: values for col, values in cells.items() if col == "trial" or any(v != "-" for v in values)}
    measured = any(v["measured_ms"] is not None for v in views)
    table = Table(title=title, caption=_caption(pick, measured))
    for col in shown:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("plan", justify="left", ratio=1, min_width=12)  # the only column that gives way
    for i, view in enumerate(views):
        if i == len(rows):  # the line under the front, and what it says of the rows below it
            table.add_section()
            note = over_cap_note(over) or ""
            table.add_row(*([""] * len(shown)), Text(note, style="bold red", overflow="fold"), end_section=True)
        plan = Text(view["plan"], no_wrap=True, overflow="ellipsis")
        table.add_row(*(values[i] for values in shown.values()), plan)
    return table
