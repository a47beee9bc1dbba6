"""The CLI's tables: the Pareto front as one line per candidate, fitted to the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from storage import best_within_cap, candidate_view, over_cap_note, ties

if TYPE_CHECKING:
    from storage import CandidateRow

__all__ = ["front_table", "pct"]


def pct(v: float | None, base: float | None) -> str:
    return f"{100 * v / base:.1f}%" if v is not None and base else "-"


def _mark(view: dict[str, Any], best: CandidateRow | None, tied: Mapping[int, Any]) -> str:
    """The trial's cell: ``*`` the pick, ``≈`` a candidate within its noise."""
    if best is not None and view["candidate"] == best.id:
        return f"{view['trial']} *"
    return f"{view['trial']} ≈" if view["candidate"] in tied else str(view["trial"])


def _caption(starred: bool, tied: bool, measured: bool) -> str:
    caption = (
        "val: validation accuracy (selected on); test: after `prunetune finalize`; "
        "whole plans: `prunetune front --plans`"
    )
    if measured:
        caption += "; latency: the device profile's prediction, measured: end to end after the run"
    if tied:
        caption = f"≈ tied with * (its lead is within 2 paired standard errors on the same images); {caption}"
    if starred:
        caption = f"* the best within the budget's cap (at the highest rung); {caption}"
    return caption


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
    below the front under a line that says so, never starred. A candidate within the noise of the pick
    (:func:`storage.ties`: its paired difference on the same validation images is under two standard
    errors) is marked ``≈``: the pick did not beat it, whatever its digits say.
    """
    best = best_within_cap(rows, score)  # starred: the study's pick (its evaluate.score)
    tied = ties(rows, best, score) if best is not None else {}
    views = [candidate_view(r, base_cost, ()) for r in [*rows, *over]]

    def num(key: str, fmt: str, unit: str = "") -> list[str]:
        return ["-" if v[key] is None else format(v[key], fmt) + unit for v in views]

    cells = {
        "trial": [_mark(v, best, tied) for v in views],
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
    table = Table(title=title, caption=_caption(best is not None, bool(tied), measured))
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
