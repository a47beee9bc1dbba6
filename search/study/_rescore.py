"""The last rung: the best few candidates re-scored with a longer fine-tune before "best" is declared.

At the top rung, the best candidates of a study often differ by less than
their score's noise (a 200-step fine-tune scored on a validation split), so
picking the most accurate one is close to a coin toss. With
``evaluate.rescore_top = k`` (``k > 0``), once the study holds its candidates
and none is running, the ``k`` best candidates at the top rung (by
``evaluate.score``: accuracy, or validation loss)
continue from their own weights to ``evaluate.rescore_steps`` fine-tune steps
in all (default: four times the top rung's), with a fresh cosine schedule, and
are scored on the whole validation split, as a promoted candidate is. The
candidates just below the ``k`` that the ``k``-th does not beat beyond its
noise (:func:`storage.ties`: under two paired standard errors on the same
validation images) go on with them, at most ``k`` more: no candidate is left
out of the longer fine-tune by a difference the score cannot see. (A study
with a time limit re-scores exactly ``k``, the time it reserved.) The ``k``-th
is re-scored last, after the candidates tied with it: a rerun after an
interrupt finds it still at the top rung, and so the same ties. The
result is stored as a rung of its own (``StudyStore.add_rung``: the rung, the
candidate's accuracy, its new weights file), so "best within the cap"
(:func:`storage.best_within_cap`: the best-scored of those trained longest)
and the Pareto front use it, and the sampler is not told (it hears rung 0).

A candidate whose weights file this machine cannot read (a Ray node without a
shared ``search.artifacts_dir``) is skipped with a line saying so.

Idempotent and safe with several workers: a candidate is extended only if its
rungs are still what the re-scorer read (compare-and-swap in the store), so a
rerun, or two workers concluding at once, never re-score it twice; the
loser's weights file is removed. An interrupt between two candidates stops
cleanly; the same command finishes the rest.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from spaces import Status, check_interrupt

if TYPE_CHECKING:
    from search.preparation._prepare import Prepared
    from storage import CandidateRow

__all__ = ["rescore", "rescore_steps", "settled"]


def rescore_steps(p: Prepared) -> int:
    """Cumulative fine-tune steps of the re-scoring rung."""
    e = p.config.evaluate
    return e.rescore_steps if e.rescore_steps is not None else 4 * p.rungs[-1]


def settled(p: Prepared, rows: list[CandidateRow], *, on_time: bool = False) -> bool:
    """Whether the study holds its candidates (or this run stopped on time: ``on_time``, see
    :mod:`search.study._deadline`) and none runs: the last worker to finish does the closing work
    (re-scoring here, the front's latency measurement in :mod:`search.study._remeasure`)."""
    full = on_time or len(rows) >= p.config.search.candidates
    return full and not any(r.status is Status.RUNNING for r in rows)


def _chosen(p: Prepared, on_time: bool) -> list[CandidateRow]:
    """The candidates still to re-score: of the ``k`` best by their score at the top rung (re-scored ones
    included, ranked by that same score), those not re-scored yet. A study extended later, or a worker that
    stopped on time before another finished, re-scores a newcomer that ranks among them."""
    rows = p.store.candidates(p.study_id)
    if not settled(p, rows, on_time=on_time):
        return []  # another worker is still evaluating: the last one to finish re-scores
    top = len(p.rungs) - 1
    ranked = [r for r in rows if r.status is Status.COMPLETE and r.top_rung >= top and r.artifact]
    score = p.config.evaluate.score
    ranked.sort(key=lambda r: (_missing_last(r.score_after(p.rungs[-1], score)), r.macs or 0.0, r.id))
    k = p.config.evaluate.rescore_top
    chosen = ranked[:k]
    if len(chosen) == k and chosen[-1].top_rung == top and p.config.search.time is None:
        extra = _tied_with(chosen[-1], [r for r in ranked[k : 2 * k] if r.top_rung == top], score)
        chosen = [*chosen[:-1], *extra, chosen[-1]]  # the k-th last: until it is done, a rerun finds the same ties
    return [r for r in chosen if r.top_rung == top]


def _tied_with(edge: CandidateRow, below: list[CandidateRow], score: str) -> list[CandidateRow]:
    """Those of ``below`` (ranked just under the ``k`` best) whose score ``edge`` (the ``k``-th) does not beat
    beyond its noise: the re-scoring rung takes them too (see the module docs)."""
    from storage import ties

    tied = ties([edge, *below], edge, score)
    return [r for r in below if r.id in tied]


def _missing_last(score: float | None) -> float:
    """A sort key that puts the best score first and a missing one last: ``0.0`` is a score (an accuracy of 0, or
    a loss of 0 in the loss score), never a missing one."""
    return float("inf") if score is None else -score


def _rung_scores(artifact: str, rungs: tuple[int, ...]) -> dict[int, tuple]:
    """The per-image scores of each rung kept beside ``artifact`` (steps -> ``(correct, loss, kl)``), which the
    re-scored weights file keeps too: a promotion still compares other candidates with them."""
    from storage import load_sample_scores

    out = {}
    for steps in rungs:
        kept = load_sample_scores(artifact, steps)
        if kept is not None and "correct" in kept:
            out[steps] = (kept["correct"], kept["loss"], kept.get("kl"))
    return out


def rescore(p: Prepared, *, on_time: bool = False) -> list[str]:
    """Re-score the best candidates at the top rung (see the module docs); one line per candidate re-scored.

    ``on_time``: the run stopped on its time limit before the study held its candidates; re-score what it holds.
    """
    if p.config.evaluate.rescore_top <= 0:
        return []
    events = []
    for row in _chosen(p, on_time):
        check_interrupt()  # a safe point: between two candidates
        line = _rescore_one(p, row)
        if line:
            events.append(line)
    return events


def _rescore_one(p: Prepared, row: CandidateRow) -> str | None:
    """Continue ``row`` from its weights to the re-scoring rung and store it; ``None`` if another worker did."""
    from evaluators import Context, load_weights
    from search.study._candidate import drop_candidate_files, save_candidate, score_on_pool
    from spaces import Plan

    e, steps = p.config.evaluate, rescore_steps(p)
    done = p.rungs[-1]
    if not Path(str(row.artifact)).is_file():  # a Ray node wrote it where this machine cannot read
        return f"candidate {row.id}: its weights file is not on this machine ({row.artifact}); not re-scored"
    model = load_weights(p.space.apply(Plan.from_json(row.plan)), str(row.artifact)).to(p.device)
    ctx = Context(
        data=p.data,
        teacher=p.base_model if e.needs_teacher(e.kd_weight) else None,
        device=p.device,
        seed=e.seed + len(p.rungs),
        batch_size=e.batch_size,
        steps=steps - done,
        resumed=True,
    )
    try:
        metrics = score_on_pool(p.pool, model, p.evaluator.evaluate(model, ctx))
    except (ValueError, RuntimeError) as exc:  # as a rung's failure: the candidate keeps its last rung
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return f"candidate {row.id}: re-scoring failed ({why}); kept its rung {row.top_rung}"
    if metrics.status is not Status.COMPLETE or metrics.accuracy is None:
        return f"candidate {row.id}: re-scoring failed ({metrics.reason}); kept its rung {row.top_rung}"
    name = f"{row.id}-{steps}steps-{uuid.uuid4().hex[:8]}.safetensors"  # never another worker's file
    path = save_candidate(model, p.artifacts / name, metrics, _rung_scores(str(row.artifact), p.rungs))
    added = p.store.add_rung(
        row.id, len(p.rungs), steps, metrics.accuracy, artifact=path, loss=metrics.loss, objectives=p.objectives,
        kl=metrics.kl,
    )  # fmt: skip
    if not added:
        drop_candidate_files(path)
        return None
    return f"candidate {row.id}: re-scored with {steps} fine-tune steps: {row.accuracy:.4f} -> {metrics.accuracy:.4f}"
