"""Tables and reports of a study for product teams (pandas): CSV, Markdown and HTML (:mod:`storage._html`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from storage._html import ReportExtras
    from storage._store import StudyStore

__all__ = ["PHASES", "candidates_frame", "plan_summary", "write_report"]

PHASES = ("apply", "train", "eval", "other")  # seconds of a candidate's life, as the runner records them


def plan_summary(plan_json: str, channels: dict[str, int] | None = None, limit: int = 4) -> str:
    """A short human summary of a plan: how many groups are pruned, the largest ratios, the ranks."""
    plan = json.loads(plan_json)
    prune: dict[str, float] = plan.get("prune", {})
    rank: dict[str, Any] = plan.get("rank", {})
    parts = []
    if prune:
        top = sorted(prune.items(), key=lambda kv: -kv[1])[:limit]
        shown = ", ".join(f"{g} {r:.0%}" for g, r in top)
        parts.append(f"{len(prune)} groups pruned ({shown}{', …' if len(prune) > limit else ''})")
    if rank:
        method = plan.get("method", {})
        shown = ", ".join(f"{k} r{v}{'/' + method[k] if k in method else ''}" for k, v in list(rank.items())[:limit])
        parts.append(f"{len(rank)} layers factorized ({shown}{', …' if len(rank) > limit else ''})")
    return "; ".join(parts) or "unchanged"


def candidates_frame(store: StudyStore, study: str) -> pd.DataFrame:
    """All candidates of ``study`` as a DataFrame, with shares of the base cost and a front flag."""
    import pandas as pd

    info = store.study(study)
    base = info.base_cost
    front = {r.id for r in store.front(info.id)}
    rows = []
    for r in store.candidates(info.id):
        rows.append(
            {
                "trial": r.trial_number,
                "candidate": r.id,
                "status": r.status.value,
                "kind": r.kind,
                "accuracy": r.accuracy,  # validation, at its top rung: what the search selects on
                "rung": r.rung,
                "rung_steps": r.top_steps,
                "test_accuracy": r.test_accuracy,  # after `prunetune finalize`: reported, never selected on
                "macs": r.macs,
                "macs_pct": 100 * r.macs / base["macs"] if r.macs is not None and base.get("macs") else None,
                "params": r.params,
                "params_pct": 100 * r.params / base["params"] if r.params is not None and base.get("params") else None,
                "bytes": r.bytes,
                "latency_ms": r.latency,
                "seconds": r.seconds,
                "on_front": r.id in front,
                "attempts": r.attempts,
                "plan_hash": r.plan_hash,
                "plan": plan_summary(r.plan),
                "error": r.error,
                **{f"t_{k}": (r.phases or {}).get(k) for k in PHASES},
                "history": json.dumps(r.history) if r.history else None,
            }
        )
    columns = [
        "trial", "candidate", "status", "kind", "accuracy", "rung", "rung_steps", "test_accuracy", "macs", "macs_pct",
        "params",
        "params_pct", "bytes", "latency_ms", "seconds", "on_front", "attempts", "plan_hash", "plan", "error",
        *(f"t_{k}" for k in PHASES), "history",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


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
    front = df[df["on_front"]].sort_values("macs")
    front.to_csv(paths[1], index=False)
    counts = df["status"].value_counts().to_dict()
    base_acc = info.base_accuracy
    shown = ["trial", "accuracy", "rung_steps", "test_accuracy", "macs_pct", "params_pct", "latency_ms", "plan"]
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
        + ("" if info.space_options.get("has_test", True) else "; this data has no test split")
        + ").",
        "",
        front[shown].to_markdown(index=False, floatfmt=".4g") if len(front) else "(no completed candidate yet)",
        "",
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
