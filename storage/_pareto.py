"""Non-dominated filtering: of points (all objectives minimised), and of candidates across rungs; the device check
of a latency cap (:func:`exceeds_cap`), which keeps a candidate measured over the cap off the front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from spaces import Direction, Objective

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from storage._schema import CandidateRow

__all__ = ["best_within_cap", "exceeds_cap", "pareto_front", "rung_front", "write_front"]


def pareto_front(points: Sequence[Sequence[float | None]]) -> list[int]:
    """Indices of the points no other point dominates; points with a missing value are left out.

    ``a`` dominates ``b`` when it is no worse in every objective and better in one.
    Equal points are all kept. O(n^2), fine for the thousands of candidates a study holds.
    """
    valid = [i for i, p in enumerate(points) if all(v is not None for v in p)]
    return [i for i in valid if not any(j != i and dominates(points[j], points[i]) for j in valid)]


def dominates(a: Sequence[float | None], b: Sequence[float | None]) -> bool:
    """``a`` is no worse than ``b`` on every objective (minimised) and better on one; False if a value is missing."""
    if any(v is None for v in (*a, *b)):
        return False
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))  # type: ignore[operator]


def _minimised(row: CandidateRow, steps: int | None, objectives: Sequence[Objective]) -> list[float | None]:
    out: list[float | None] = []
    for obj in objectives:
        if obj is Objective.ACCURACY:
            v = row.accuracy_after(steps)
        elif obj is Objective.PERPLEXITY:  # a language model's, at the same recovery steps
            v = row.perplexity_after(steps)
        else:
            v = row.objective(obj)
        maximize = obj.direction is Direction.MAXIMIZE
        out.append(None if v is None else (-v if maximize else v))
    return out


def rung_front(rows: Sequence[CandidateRow], objectives: Sequence[Objective]) -> list[int]:
    """Ids of the candidates of the Pareto front across rungs: compared at the same rung, never across.

    Candidates of a multi-fidelity study stop at different rungs (more fine-tune
    steps give higher accuracy), so a 50-step accuracy is never compared with an
    800-step one. ``a`` dominates ``b`` when ``a`` was measured after as many
    fine-tune steps as ``b``'s top rung and, there, is no worse on every
    objective and better on one. So a candidate is removed only by one
    evaluated at least as long, on equal terms; and the candidates that reached
    the highest rung form the front among themselves. With one rung this is the
    plain Pareto front (candidates stored before rungs are compared only with
    each other). A candidate with no known accuracy is left out.
    """
    scored = [r for r in rows if r.top_rung >= 0]
    keep = []
    for b in scored:
        pb = _minimised(b, b.top_steps, objectives)
        if any(v is None for v in pb):
            continue
        # a value missing in a's point: a was not measured where b stopped, so it cannot dominate b
        if not any(a.id != b.id and dominates(_minimised(a, b.top_steps, objectives), pb) for a in scored):
            keep.append(b.id)
    return keep


def best_within_cap(rows: Sequence[CandidateRow], score: str = "accuracy") -> CandidateRow | None:
    """The best candidate within the budget's cap: the best-scored of those trained longest (highest rung).

    The one rule for "best" everywhere (the CLI's front and status, the run's
    progress line, the report's filters panel): a 50-step score never beats
    an 800-step one. ``score`` is the study's ``evaluate.score`` (``StudySpec.score``):
    the validation accuracy, or (``"loss"``) the lowest validation loss, ties
    broken by accuracy (a row stored without a loss ranks below every row with
    one at its rung). A candidate measured over the latency cap (:attr:`CandidateRow.over_cap`) is never
    "within the cap". ``None`` when no candidate has an accuracy.
    """
    scored = [r for r in rows if r.accuracy is not None and not r.over_cap]  # measured over the cap: not within

    def key(r: CandidateRow) -> tuple[int, float, float]:
        s = r.score_after(r.top_steps, score) if score != "accuracy" else r.accuracy
        return r.top_rung, -math.inf if s is None else s, r.accuracy or 0.0

    return max(scored, key=key, default=None)


def exceeds_cap(measured: Mapping[str, float], cap_ms: float) -> tuple[bool, float]:
    """Whether an end-to-end measurement is over a latency cap by more than its noise, and that noise (ms).

    The rule: the noise is the uncertainty of the measured median, from the
    measurement's own runs: their 10-90 % spread over the square root of their
    count, ``(p90 - p10) / sqrt(runs)`` (for normal scatter about two standard
    errors of the median, ``2 * 1.25 * sigma / sqrt(runs)`` with
    ``sigma = (p90 - p10) / 2.56``); the candidate is over the cap when
    ``median > cap_ms + noise``. A median within the noise of the cap is not
    called over (a second measurement could fall on either side), and a busy
    machine's long tail widens the noise instead of flagging candidates at random.
    """
    median, p10, p90 = float(measured["measured_ms"]), float(measured["p10_ms"]), float(measured["p90_ms"])
    noise = max(p90 - p10, 0.0) / math.sqrt(max(float(measured.get("runs", 1.0)), 1.0))
    return median > cap_ms + noise, noise


def write_front(s: Session, study_id: int, objectives: Sequence[Objective]) -> None:
    """Rewrite the study's ``prunetune_pareto`` rows from its COMPLETE candidates, in session ``s``.

    A candidate measured over the latency cap (:func:`exceeds_cap`) is left out: it does not meet the budget,
    so it neither joins the front nor keeps the candidates it dominates off it.
    """
    from sqlalchemy import select

    from spaces import Status
    from storage._schema import CandidateTable, ParetoTable, candidate_row

    done = [
        row
        for c in s.scalars(
            select(CandidateTable).where(CandidateTable.study_id == study_id, CandidateTable.status == Status.COMPLETE)
        )
        if not (row := candidate_row(c)).over_cap
    ]
    s.query(ParetoTable).filter(ParetoTable.study_id == study_id).delete()
    for cid in rung_front(done, objectives):
        s.add(ParetoTable(study_id=study_id, candidate_id=cid))
