"""Tables and reports of a study for product teams (pandas): CSV, Markdown, and HTML (:mod:`storage._html`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from storage._samples import PICK_LEGEND, Pick, pick_within_cap
from storage._view import VIEW_COLUMNS, candidate_view, latency_check, over_cap_note

if TYPE_CHECKING:
    import pandas as pd

    from storage._figures import ReportExtras
    from storage._schema import CandidateRow
    from storage._store import StudyStore

__all__ = ["candidates_frame", "write_report"]


def candidates_frame(store: StudyStore, study: str) -> pd.DataFrame:
    """All candidates of ``study`` as a DataFrame (the columns of :func:`storage._view.candidate_view`, then
    ``pick``: ``*`` the study's pick, ``≈`` a candidate within the best-scored one's noise,
    :func:`storage.pick_within_cap`)."""
    import pandas as pd

    info = store.study(study)
    front = {r.id for r in store.front(info.id)}
    candidates = store.candidates(info.id)
    rows = [candidate_view(r, info.base_cost, front) for r in candidates]
    df = pd.DataFrame(rows, columns=list(VIEW_COLUMNS))
    pick = pick_within_cap([r for r in candidates if r.id in front], info.spec.score)  # as `front` and `status`
    df["pick"] = [_pick_mark(r, pick) for r in candidates]
    return df


def _pick_mark(r: CandidateRow, pick: Pick | None) -> str:
    """``*`` the pick, ``≈`` the best-scored (when a cheaper plan tied with it was picked) or one tied with it."""
    if pick is None:
        return ""
    if r.id == pick.row.id:
        return "*"
    return "≈" if r.id in pick.tied or r.id == pick.best.id else ""


def write_report(
    store: StudyStore, study: str, out: str | Path, *, html: bool = True, extras: ReportExtras | None = None
) -> list[Path]:
    """``candidates.csv``, ``front.csv``, ``report.md`` and (``html``) ``report.html`` of ``study`` in ``out``.

    ``extras`` holds what only the model can tell (plans' per-layer structure, filter
    norms, the run's config and versions; built by ``search``); returns the paths.
    """
    info = store.study(study)
    df = candidates_frame(store, study)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "candidates.csv", out / "front.csv", out / "report.md"]
    df.to_csv(paths[0], index=False)
    front = df[df["on_front"].astype(bool)].sort_values("macs")  # an empty column is of dtype object
    front.to_csv(paths[1], index=False)
    counts = df["status"].value_counts().to_dict()
    base_acc = info.base_accuracy
    shown = ["trial", "pick", "accuracy", "rung_steps", "test_accuracy", "macs_pct", "params_pct", "latency_ms", "plan"]
    if front["measured_ms"].notna().any():  # a device profile's predictions, checked end to end after the run
        shown.insert(shown.index("latency_ms") + 1, "measured_ms")
    check = latency_check(store.front(info.id))
    over = df[df["over_cap"]].sort_values("macs")  # measured over the latency cap: shown apart, below the front
    over_note = over_cap_note(store.over_cap(info.id))
    lines = [
        f"# PruneTune study `{study}`",
        "",
        f"- model `{info.model_spec}` on `{info.data_spec}`, budget {json.dumps(info.budget)}",
        f"- base: accuracy {base_acc:.4f}, MACs {info.base_cost['macs']:,}, params {info.base_cost['params']:,}"
        if base_acc is not None
        else f"- base: MACs {info.base_cost['macs']:,}, params {info.base_cost['params']:,}",
        f"- candidates: {len(df)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})",
        "",
        f"## Pareto front ({len(front)} candidates)",
        "",
        "`accuracy`: validation (the search selects on it) after `rung_steps` fine-tune steps; `test_accuracy`: the"
        " test split, after `prunetune finalize` (empty: not finalized"
        + ("" if info.spec.has_test else "; this data has no test split")
        + ").",
        "",
        *_front_notes(front, shown, check),
        *_over_cap_section(over, shown, over_note),
        "## All candidates",
        "",
        df[["trial", "status", "accuracy", "macs_pct", "params_pct", "seconds", "plan"]].to_markdown(
            index=False, floatfmt=".4g"
        )
        if len(df)
        else "(none)",
        "",
    ]
    paths[2].write_text("\n".join(lines))
    if html:
        from storage._html import render_report

        paths.append(out / "report.html")
        paths[3].write_text(render_report(store, info, df, extras), encoding="utf-8")
    return paths


def _front_notes(front: pd.DataFrame, shown: list[str], check: str | None) -> list[str]:
    """The front's table, the latency check's line, and the legend of ``pick`` when a plan is tied with it."""
    table = front[shown].to_markdown(index=False, floatfmt=".4g") if len(front) else "(no completed candidate yet)"
    return [
        table,
        "",
        *([f"{check}.", ""] if check else []),
        *([PICK_LEGEND, ""] if (front["pick"] == "≈").any() else []),
    ]


def _over_cap_section(over: pd.DataFrame, shown: list[str], note: str | None) -> list[str]:
    """The report's lines on the candidates measured over the latency cap (none: no lines)."""
    if not len(over) or note is None:
        return []
    cols = [c for c in shown if c in over.columns]
    if "measured_ms" not in cols:
        cols.insert(cols.index("latency_ms") + 1, "measured_ms")
    return [
        f"## Measured over the latency cap ({len(over)} candidates, not on the front)",
        "",
        note,
        "",
        over[cols].to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
