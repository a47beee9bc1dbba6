"""One projection of a stored candidate to a row: what the DataFrame, the API, ``model.json`` and the CLI show.

:func:`candidate_view` computes every per-candidate value a reader shows
(shares of the base cost, the plan's summary, the front flag, seconds per
phase, ...) once; each reader picks its columns, so a new column is one line
here and one where it is shown. :func:`plan_summary` asks each plan dimension
for its phrase (:meth:`spaces.dimensions.Dimension.summary`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spaces import Plan, PruneTuneError, first_line
from spaces.dimensions import Reported, with_role
from storage._records import PHASES

if TYPE_CHECKING:
    from storage._schema import CandidateRow

__all__ = ["ERROR_WARNING", "VIEW_COLUMNS", "candidate_view", "latency_check", "over_cap_note", "plan_summary"]

VIEW_COLUMNS = (
    "trial", "candidate", "status", "kind", "accuracy", "rung", "rung_steps", "test_accuracy", "macs", "macs_pct",
    "params", "params_pct", "bytes", "bytes_pct", "latency_ms", "measured_ms", "over_cap", "seconds", "on_front",
    "attempts", "plan_hash", "plan", "error", *(f"t_{k}" for k in PHASES), "history",
)  # fmt: skip


def plan_summary(plan_json: str, limit: int = 4) -> str:
    """A short human summary of a plan: each dimension's phrase ("12 groups pruned (...)"), or "unchanged"."""
    try:
        plan = Plan.from_json(plan_json)
    except PruneTuneError as exc:  # e.g. a plan with a dimension this version does not know
        return f"(unreadable here: {first_line(exc)})"
    parts = [s for dim in with_role(Reported) if (s := dim.summary(plan, limit))]
    return "; ".join(parts) or "unchanged"


def _pct(value: float | None, base: Mapping[str, Any], metric: str) -> float | None:
    return 100 * value / base[metric] if value is not None and base.get(metric) else None


def candidate_view(row: CandidateRow, base_cost: Mapping[str, Any], front: Collection[int]) -> dict[str, Any]:
    """Every value a reader shows of ``row`` (keys: :data:`VIEW_COLUMNS`; ``plan`` is the plan's summary)."""
    phases = row.phases.to_json() if row.phases else {}
    return {
        "trial": row.trial_number,
        "candidate": row.id,
        "status": row.status.value,
        "kind": row.kind.value if row.kind else None,
        "accuracy": row.accuracy,  # validation, at its top rung: what the search selects on
        "rung": row.rung,
        "rung_steps": row.top_steps,
        "test_accuracy": row.test_accuracy,  # after `prunetune finalize`: reported, never selected on
        "macs": row.macs,
        "macs_pct": _pct(row.macs, base_cost, "macs"),
        "params": row.params,
        "params_pct": _pct(row.params, base_cost, "params"),
        "bytes": row.bytes,  # weights at their bit widths (quantized layers: packed, plus scales and zero points)
        "bytes_pct": _pct(row.bytes, base_cost, "bytes"),
        "latency_ms": row.latency,  # the device profile's prediction where the study has one, else measured
        "measured_ms": (row.device_latency or {}).get("measured_ms"),  # front members, end to end, after a run
        "over_cap": row.over_cap,  # measured over the latency cap by more than its noise: off the front
        "seconds": row.seconds,
        "on_front": row.id in front,
        "attempts": row.attempts,
        "plan_hash": row.plan_hash,
        "plan": plan_summary(row.plan),
        "error": row.error,
        **{f"t_{k}": phases.get(k) for k in PHASES},
        "history": json.dumps(row.history) if row.history else None,
    }


ERROR_WARNING = 0.15  # a study whose median latency prediction error over the front exceeds this says so


def latency_check(rows: Sequence[CandidateRow] | Sequence[Mapping[str, Any]]) -> str | None:
    """One line on the profile's error over ``rows`` (the front: candidates, or their :func:`candidate_view`
    rows) where they were measured; ``None``: none."""
    errors = [e for e in map(_prediction_error, rows) if e is not None]
    if not errors:
        return None
    med = statistics.median(errors)
    line = (
        f"latency: predicted vs measured on {len(errors)} front members, median error {100 * med:.1f} %, "
        f"max {100 * max(errors):.1f} %"
    )
    if med > ERROR_WARNING:  # the prediction is what the study ranked and limited by: say it is off
        line += f" (above {100 * ERROR_WARNING:.0f} %: trust the measured column, and profile again)"
    return line


def _prediction_error(row: CandidateRow | Mapping[str, Any]) -> float | None:
    if not isinstance(row, Mapping):
        return row.prediction_error
    predicted, measured = row.get("latency_ms"), row.get("measured_ms")
    if predicted is None or not measured or predicted != predicted or measured != measured:  # None or NaN
        return None
    return abs(float(predicted) - float(measured)) / float(measured)


def over_cap_note(rows: Sequence[CandidateRow]) -> str | None:
    """One sentence on the candidates measured over the study's latency cap (``rows``: ``StudyStore.over_cap``),
    or ``None`` when there are none."""
    if not rows:
        return None
    d = rows[0].device_latency or {}
    trials = ", ".join(str(r.trial_number) for r in rows)
    return (
        f"Measured over the latency cap ({float(d.get('cap_ms', 0.0)):.3f} ms) by more than their noise: "
        f"{len(rows)} candidate{'s' if len(rows) > 1 else ''} (trial {trials}), predicted within it; not within "
        "the budget, so off the front and never the best within the cap."
    )
