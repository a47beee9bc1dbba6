"""What the service (``prunetune serve``) answers, as pydantic models: the OpenAPI page documents exactly these.

The models are built from the store's records (:class:`storage.StudyRecord`,
:class:`storage.CandidateRow`, :class:`storage.SubmissionRecord`) by the
``*_out`` functions, the same records that the CLI prints.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from search._config import Config
from search.tasks._decoder_config import DecoderConfig
from storage import candidate_view

if TYPE_CHECKING:
    from storage import CandidateRow, StudyRecord, SubmissionRecord

__all__ = [
    "CandidateOut",
    "ErrorOut",
    "FrontFigureOut",
    "StudyDetailOut",
    "StudyOut",
    "SubmissionIn",
    "SubmissionOut",
    "TrialOut",
    "candidate_out",
    "study_out",
    "submission_out",
    "trial_out",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    error: str = Field(description="what went wrong, in one line")


class StudyOut(_Out):
    name: str
    model: str = Field(description="the base model's spec")
    data: str = Field(description="the data spec")
    budget: dict[str, str | float] = Field(description="cost caps, absolute or relative to the base model")
    base_accuracy: float | None = Field(description="the uncompressed model's validation accuracy")
    base_cost: dict[str, float]
    created: datetime
    candidates: int = Field(description="candidates in the study, any status")
    front: int = Field(description="candidates on the Pareto front")
    statuses: dict[str, int] = Field(description="candidates per status")
    stopped: str | None = Field(
        None, description="why the study's last run stopped on its time limit (search.time); null when it did not"
    )


class CandidateOut(_Out):
    trial: int | None = Field(description="the Optuna trial number (what `prunetune export --trial` takes)")
    candidate: int = Field(description="the candidate's id in the store")
    status: str = Field(description="COMPLETE, FAIL or RUNNING (PRUNED: stopped early, in studies before rungs)")
    kind: str | None = Field(description="where the plan came from: allocator, uniform, sampled")
    accuracy: float | None = Field(description="validation accuracy at its top rung (what the search selects on)")
    rung: int | None = Field(description="the highest rung of successive halving it reached (0: the first)")
    test_accuracy: float | None = Field(description="test accuracy, when finalized (reported, never selected on)")
    macs: float | None
    params: float | None
    bytes: float | None
    latency_ms: float | None = Field(
        description="batch-1 latency: measured (evaluate.latency), else the device profile's prediction"
    )
    seconds: float | None = Field(description="seconds the candidate's evaluation took")
    on_front: bool
    plan_summary: str
    error: str | None = Field(description="why it failed")


class TrialOut(CandidateOut):
    plan: dict[str, Any] = Field(description="the compression plan (prune ratios, ranks, methods)")
    plan_hash: str
    history: list[list[float]] | None = Field(description="[step, intermediate validation accuracy] pairs")
    rungs: list[list[float]] | None = Field(
        description="[fine-tune steps, validation accuracy, validation loss(, KL divergence from the dense model on "
        "the teacher's pool, with evaluate.score = kl)] per rung reached (older: no loss)"
    )
    final: dict[str, Any] | None = Field(description="what `prunetune finalize` measured: steps, accuracies, weights")
    phases: dict[str, float] | None = Field(description="seconds per phase: apply, train, eval, other")
    attempts: int


class StudyDetailOut(_Out):
    study: StudyOut
    candidates: list[CandidateOut]
    front: list[int] = Field(description="the trial numbers on the Pareto front, by MACs")


class FrontFigureOut(_Out):
    candidates: int
    figure: dict[str, Any] = Field(description="the front's plotly figure (data and layout)")


def _task(v: Any) -> str:
    """Which schema a submitted config is read by: the vision one without a ``task``, the decoder one for
    ``"decoder"``, and for any other task (a plug-in's) none here: its own check (the task contract's
    ``check_submission``) validates it, and an unknown task is refused there in one line."""
    task = v.get("task", "vision") if isinstance(v, dict) else getattr(v, "task", "vision")
    return task if task in ("vision", "decoder") else "other"


class SubmissionIn(BaseModel):
    """A study to run: a config as the TOML file holds it (same schema), as JSON; ``"task": "decoder"`` makes it
    a language-model study (the decoder config's schema)."""

    model_config = ConfigDict(extra="forbid")
    config: Annotated[
        Annotated[Config, Tag("vision")]
        | Annotated[DecoderConfig, Tag("decoder")]
        | Annotated[dict[str, Any], Tag("other")],
        Discriminator(_task),
    ]


class SubmissionOut(_Out):
    id: int
    study: str
    status: str = Field(description="queued, running, done or failed")
    worker: str | None
    error: str | None
    created: datetime
    updated: datetime


def study_out(info: StudyRecord, rows: list[CandidateRow], front: int) -> StudyOut:
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    return StudyOut(
        name=info.name,
        model=info.model_spec,
        data=info.data_spec,
        budget=info.budget,
        base_accuracy=info.base_accuracy,
        base_cost=info.base_cost,
        created=info.created,
        candidates=len(rows),
        front=front,
        statuses=statuses,
        stopped=info.stopped,
    )


def candidate_out(r: CandidateRow, front: set[int]) -> CandidateOut:
    view = candidate_view(r, {}, front)
    return CandidateOut(plan_summary=view["plan"], **{k: view[k] for k in CandidateOut.model_fields if k in view})


def trial_out(r: CandidateRow, front: set[int]) -> TrialOut:
    return TrialOut(
        **candidate_out(r, front).model_dump(),
        plan=json.loads(r.plan),
        plan_hash=r.plan_hash,
        history=[list(h) for h in r.history] if r.history else None,
        phases=r.phases.to_json() if r.phases else None,
        attempts=r.attempts,
        rungs=r.rungs,
        final=r.final.to_json() if r.final else None,
    )


def submission_out(s: SubmissionRecord) -> SubmissionOut:
    return SubmissionOut(
        id=s.id, study=s.study, status=s.status, worker=s.worker, error=s.error, created=s.created, updated=s.updated
    )
