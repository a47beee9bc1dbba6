"""The report's panels: one section of ``report.html`` each, in a registry the page iterates.

A panel is an id (the page's anchor), a title and a body, both drawn from a
:class:`ReportInput` (the store, the study, the candidates' DataFrame, and
:class:`~storage._figures.ReportExtras` computed with the model). The built-in
panels are ``front``, ``structure``, ``filters``, ``history`` and
``reproducibility``; a new one is a function to an HTML body and one
:func:`register_panel` line (``before`` places it). A plan dimension needs no
panel of its own: its structure rows become a row of the ``structure`` figure.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from spaces import Registry, Status
from storage._figures import (
    ReportExtras,
    div,
    filters_figure,
    fmt,
    front_figure,
    history_figures,
    note,
    public_url,
    structure_figure,
    table,
)
from storage._samples import PICK_LEGEND
from storage._view import latency_check, over_cap_note

if TYPE_CHECKING:
    import pandas as pd

    from storage._schema import StudyRecord
    from storage._store import StudyStore

__all__ = ["PANELS", "Panel", "ReportInput", "panels", "register_panel"]


@dataclass(frozen=True)
class ReportInput:
    """What every panel may draw from."""

    store: StudyStore
    info: StudyRecord
    df: pd.DataFrame  # the candidates (storage.candidates_frame)
    extras: ReportExtras


@dataclass(frozen=True)
class Panel:
    """One section of the report: its id (the page's anchor), its title and its HTML body."""

    id: str
    title: Callable[[ReportInput], str]
    body: Callable[[ReportInput], str]


PANELS: Registry[Panel] = Registry("report panel", Panel, group="prunetune.panels", name_attr="id")


def register_panel(panel: Panel, *, before: str | None = None) -> Panel:
    """Add ``panel`` to the report (at the end, or before the panel with id ``before``); returns it."""
    return PANELS.register(panel, before=before)


def unregister_panel(panel_id: str) -> None:
    if panel_id in PANELS:
        PANELS.unregister(panel_id)


def panels() -> tuple[Panel, ...]:
    return tuple(PANELS.loaded())


def _front(r: ReportInput) -> str:
    front = r.df[r.df["on_front"].astype(bool)].sort_values("macs")  # an empty column is of dtype object
    shown = [
        "trial", "pick", "kind", "accuracy", "rung_steps", "test_accuracy", "macs_pct", "params_pct", "bytes_pct",
        "latency_ms", "measured_ms", "plan",
    ]  # fmt: skip
    check = latency_check(front.to_dict("records"))
    over = r.df[r.df["over_cap"].astype(bool)].sort_values("macs")
    if check is None and not len(over):
        shown.remove("measured_ms")  # no device profile: nothing was predicted, nothing re-measured
    body = div(front_figure(r.df, r.info), "pt-front") + table(front[shown]) + (note(check) if check else "")
    if r.info.stopped:  # the last run ended on its time limit: the front is what that time bought
        body += note(r.info.stopped)
    if (r.df["pick"] == "≈").any():
        body += note(PICK_LEGEND.replace("`", ""))
    over_note = over_cap_note(r.store.over_cap(r.info.id)) if len(over) else None
    if over_note is None:
        return body
    return (
        body
        + f"<h3>Measured over the latency cap ({len(over)}, not on the front)</h3>"
        + table(over[shown])
        + note(over_note)
    )


def _structure(r: ReportInput) -> str:
    s = r.extras.structure
    if s is not None and len(s):
        return div(structure_figure(s), "pt-structure")
    return note(r.extras.notes.get("structure", "no plan to show"))


def _filters(r: ReportInput) -> str:
    f = r.extras.filters
    if f is not None and len(f):
        return div(filters_figure(f, r.extras.filters_of), "pt-filters")
    return note(r.extras.notes.get("filters", "no front member yet"))


def _history(r: ReportInput) -> str:
    best, phases, outcomes = history_figures(r.df, r.info.base_accuracy)
    failed = r.df[r.df["status"].isin([Status.FAIL.value, Status.PRUNED.value])]
    reasons = (
        table(failed[["trial", "status", "attempts", "error"]])
        if len(failed)
        else note("no candidate failed or was stopped early")
    )
    return (
        "<h3>Best so far</h3>" + div(best, "pt-best") + "<h3>Seconds per candidate, by phase</h3>"
        + div(phases, "pt-phases") + "<h3>Outcomes, failures and their reasons</h3>"
        + div(outcomes, "pt-outcomes") + reasons
    )  # fmt: skip


def _reproducibility(r: ReportInput) -> str:
    info = r.info
    repro = {
        "study": info.name, "model": info.model_spec, "data": info.data_spec, "budget": json.dumps(info.budget),
        "base accuracy (validation)": fmt(info.base_accuracy, ".4f"),
        "base cost": ", ".join(f"{k} {v:,}" for k, v in info.base_cost.items()),
        "study created": info.created.isoformat(timespec="seconds"), "store": public_url(r.store.url),
        "report written": datetime.now(UTC).isoformat(timespec="seconds"), **r.extras.reproducibility,
    }  # fmt: skip
    config = repro.pop("config", None)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in repro.items())
    body = f'<table class="pt-table pt-repro">{rows}</table>'
    return body + (
        f"<details><summary>config</summary><pre>{html.escape(str(config))}</pre></details>" if config else ""
    )


def _front_title(r: ReportInput) -> str:
    on_time = "; stopped on time" if r.info.stopped else ""
    return f"Pareto front ({int(r.df['on_front'].sum())} of {len(r.df)} candidates{on_time})"


def _filters_title(r: ReportInput) -> str:
    return f"Filter L1 norms, pruned filters of {r.extras.filters_of or '-'} marked"


for _panel in (
    Panel("front", _front_title, _front),
    Panel("structure", lambda r: "Per-layer structure of the plans", _structure),
    Panel("filters", _filters_title, _filters),
    Panel("history", lambda r: "Search history", _history),
    Panel("reproducibility", lambda r: "Reproducibility", _reproducibility),
):
    register_panel(_panel)
