"""``prunetune finalize``: train the chosen plans for real and measure them on the test split.

The search scores candidates with short fine-tunes on the validation split; a
plan a user ships deserves the long recipe. :func:`finalize` rebuilds each
chosen plan from the **base weights** (not the candidate's quick fine-tune),
recalibrates BatchNorm, fine-tunes it for ``evaluate.final_steps`` steps
distilled from the original (``evaluate.final_kd_weight``), and measures
validation accuracy and — only here, never during the search — test accuracy.
The weights go to ``artifacts/studies/<study>/<id>-final.safetensors``; the
store keeps the test accuracy and what was measured beside the candidate
(``final``: steps, accuracies, weights file and SHA-256), and ``export`` then
ships the finalized weights. :func:`train_final` is the same recipe for any
compressed model (the benchmark gives every baseline exactly this treatment).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.operations._export import export_candidate, out_dir
from search.preparation._prepare import preparation, prepare_worker
from spaces import Plan, PruneTuneError, Status, UsageError, check_interrupt, safe_points
from storage import FinalResult

if TYPE_CHECKING:
    from torch import nn

    from search._config import Config
    from search.preparation._prepare import Worker
    from storage import CandidateRow

__all__ = ["Finalized", "finalize", "train_final"]


@dataclass(frozen=True)
class Finalized:
    """One finalized candidate: its accuracies after the long recipe and where its weights are."""

    trial: int | None
    candidate: int
    steps: int
    val_accuracy: float
    test_accuracy: float | None  # None when the data has no test split
    search_accuracy: float | None  # the validation accuracy the search measured (short fine-tune)
    artifact: str
    seconds: float
    export: Path | None = None


def train_final(
    p: Worker, model: nn.Module, *, steps: int, seed: int | None = None, progress: bool = False
) -> tuple[float, float | None]:
    """BN recalibration (and with ``evaluate.recipe = "blockwise"`` block-wise training), ``steps`` fine-tune
    steps distilled from the base model, then (validation, test) accuracy on the whole splits; ``model`` is
    trained in place. A failed fine-tune is a PruneTuneError."""
    from evaluators import Accuracy, Context, FineTune, Pipeline, evaluate_accuracy

    e = p.config.evaluate
    kd = e.final_kd_weight
    ctx = Context(
        data=p.data,
        teacher=p.base_model if e.needs_teacher(kd) else None,
        device=p.device,
        seed=e.seed if seed is None else seed,
        batch_size=e.batch_size,
        progress=progress,
    )
    recipe = Pipeline([*preparation(p.config), FineTune(steps=steps, lr=e.lr, kd_weight=kd), Accuracy()])
    metrics = recipe.evaluate(model, ctx)
    if metrics.status is not Status.COMPLETE or metrics.accuracy is None:
        raise PruneTuneError(f"the long fine-tune failed: {metrics.reason}")
    test = evaluate_accuracy(model, ctx, split="test")[0] if p.data.test is not None else None
    return float(metrics.accuracy), test


def finalize(
    config: Config,
    *,
    trials: Sequence[int] = (),
    front: bool = False,
    steps: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> list[Finalized]:
    """Finalize ``trials`` (or the whole front) of the config's study; export each to ``out/trial-N`` if given."""

    if front == bool(trials):
        raise UsageError("finalize needs --trial N (one or more) or --front")
    k = steps if steps is not None else config.evaluate.final_steps
    if k < 1:
        raise UsageError(f"--steps must be a positive number of fine-tune steps, got {k}")
    p = prepare_worker(config)  # an existing study (else one line, nothing written); no sampler, no evaluator
    rows = _chosen(p, trials, front)
    dest = out_dir(out) if out is not None else None
    done = []
    with safe_points():  # the long fine-tunes check the stop flag; a store write or an export is never cut short
        for row in rows:
            check_interrupt()  # a safe point: between two finalized candidates
            done.append(_finalize_one(p, row, k, dest, progress))
    return done


def _chosen(p: Worker, trials: Sequence[int], front: bool) -> list[CandidateRow]:
    """The candidates to finalize: the front's, or the named trials' (each must be COMPLETE)."""
    if front:
        rows = p.store.front(p.study_id)
        if not rows:
            raise UsageError(f"study {p.study!r} has no completed candidate yet: run it first")
    else:
        rows = [p.store.candidate(p.study_id, trial_number=t) for t in trials]
    for row in rows:
        if row.status is not Status.COMPLETE:
            raise UsageError(f"trial {row.trial_number} is {row.status.value}, not COMPLETE: nothing to finalize")
    return rows


def _finalize_one(p: Worker, row: CandidateRow, steps: int, dest: Path | None, progress: bool) -> Finalized:
    """Train ``row``'s plan with the long recipe from the base weights, store what it measured, export it."""
    from evaluators import save_weights
    from storage import file_sha256  # heavy: SQLAlchemy

    t0 = time.perf_counter()
    model = p.space.apply(Plan.from_json(row.plan)).to(p.device)
    val, test = train_final(p, model, steps=steps, progress=progress)
    path = save_weights(model, p.artifacts / f"{row.id}-final.safetensors").resolve()
    final = FinalResult(
        steps=steps,
        kd_weight=p.config.evaluate.final_kd_weight,
        val_accuracy=val,
        test_accuracy=test,
        artifact=str(path),
        weights_sha256=file_sha256(path),
    )
    p.store.record_test_accuracy(row.id, test, final=final)
    export = None
    if dest is not None:
        export = export_candidate(p.store, p.study, dest / f"trial-{row.trial_number}", candidate=row.id)
    return Finalized(
        trial=row.trial_number,
        candidate=row.id,
        steps=steps,
        val_accuracy=val,
        test_accuracy=test,
        search_accuracy=row.accuracy,
        artifact=str(path),
        seconds=time.perf_counter() - t0,
        export=export,
    )
