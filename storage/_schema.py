"""The store's tables (SQLAlchemy declarative) and the plain records it hands out.

Our tables are prefixed ``prunetune_`` because Optuna's RDB storage shares the
database (it owns ``studies``, ``trials``, ...). Readers get frozen records
(:class:`StudyRecord`, :class:`CandidateRow`), never live ORM objects, so no
caller can write to the database by accident or trip over a closed session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from spaces import CandidateKind, Objective, Status
from storage._records import FinalResult, PhaseTimes, StudySpec

__all__ = [
    "SCHEMA_VERSION",
    "Base",
    "CandidateRow",
    "CandidateTable",
    "MetaTable",
    "ParetoTable",
    "StudyProfileTable",
    "StudyRecord",
    "StudyTable",
    "SubmissionRecord",
    "SubmissionTable",
    "candidate_row",
    "now",
    "study_record",
    "submission_record",
]

SCHEMA_VERSION = 8  # 2: weights_sha256; 3: kind, phases, test_accuracy, submissions; 4: rung, rungs, final;
# 5: device_latency, profiles; 6: study_profiles; 7: studies.stopped; 8: perplexity, memory (language models)


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class MetaTable(Base):
    __tablename__ = "prunetune_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class StudyTable(Base):
    __tablename__ = "prunetune_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    model_spec: Mapped[str] = mapped_column(Text)
    data_spec: Mapped[str] = mapped_column(Text)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    space_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    stopped: Mapped[str | None] = mapped_column(Text, nullable=True)  # the last run ended on its time limit: why


class CandidateTable(Base):
    __tablename__ = "prunetune_candidates"
    __table_args__ = (UniqueConstraint("study_id", "plan_hash", name="uq_candidate_plan"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("prunetune_studies.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[str] = mapped_column(Text)
    plan_hash: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    macs: Mapped[float | None] = mapped_column(Float, nullable=True)
    params: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    history: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # [[step, accuracy], ...]
    artifact: Mapped[str | None] = mapped_column(Text, nullable=True)  # weights file of the evaluated model
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the artifact, when written
    perplexity: Mapped[float | None] = mapped_column(Float, nullable=True)  # language models: validation, lower better
    memory: Mapped[float | None] = mapped_column(Float, nullable=True)  # language models: weights + KV cache bytes
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # allocator, uniform, sampled, retry
    phases: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # seconds per phase
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # reported, never selected on
    rung: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the highest rung reached (0: the first)
    rungs: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # [[steps, accuracy], ...] per rung
    final: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # what `prunetune finalize` measured
    # the device profile's prediction and, for front members, the end-to-end measurement (DeviceLatency keys)
    device_latency: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class ParetoTable(Base):
    __tablename__ = "prunetune_pareto"
    study_id: Mapped[int] = mapped_column(ForeignKey("prunetune_studies.id", ondelete="CASCADE"), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("prunetune_candidates.id", ondelete="CASCADE"), primary_key=True
    )


class ProfileTable(Base):
    """Device profiles (``spaces.DeviceProfile``): per-layer latency tables, keyed by model, device, runtime,
    threads and batch size (``DeviceProfile.key``), measured once and read by every worker and study."""

    __tablename__ = "prunetune_profiles"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(256))
    runtime: Mapped[str] = mapped_column(String(32))
    threads: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(Text)  # the profile's JSON
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class StudyProfileTable(Base):
    """A study's own refit of a cached device profile (``spaces.recalibrate``): the cached profile's tables with
    its calibration refitted on the study's front members measured end to end (``search.study._remeasure``).

    Kept per study and beside the cached profile, never in its place: the cached one is what every other study
    of the model on this device starts from; a resumed study reads its own refit (same ``key``).
    """

    __tablename__ = "prunetune_study_profiles"
    study_id: Mapped[int] = mapped_column(ForeignKey("prunetune_studies.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # the cached profile's key
    profile: Mapped[str] = mapped_column(Text)  # the refitted profile's JSON
    points: Mapped[list[Any]] = mapped_column(JSON)  # [[candidate id, measured ms], ...] it was refitted on
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


class SubmissionTable(Base):
    """Studies submitted to the service (``prunetune serve``), waiting for or run by a worker."""

    __tablename__ = "prunetune_submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(256), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued, running, done, failed
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)


@dataclass(frozen=True)
class StudyRecord:
    """A study as stored: what it compresses, under which budget, and the base model's cost and accuracy."""

    id: int
    name: str
    model_spec: str
    data_spec: str
    budget: dict[str, Any]
    space_options: dict[str, Any]
    base_cost: dict[str, Any]
    base_accuracy: float | None
    created: datetime
    stopped: str | None = None  # the last run stopped on its time limit (search.time) before the study was full

    @property
    def spec(self) -> StudySpec:
        """``space_options``, typed: the study's [space] options and its data's shape (see :class:`StudySpec`)."""
        return StudySpec.from_json(self.space_options)


@dataclass(frozen=True, kw_only=True)
class CandidateRow:
    """One candidate as stored (built by keyword only)."""

    id: int
    trial_number: int | None
    plan: str
    plan_hash: str
    status: Status
    accuracy: float | None
    macs: float | None
    params: float | None
    bytes: float | None
    latency_ms: dict[str, Any] | None
    seconds: float | None
    error: str | None
    history: list[Any] | None = None
    artifact: str | None = None
    weights_sha256: str | None = None
    worker: str | None = None
    attempts: int = 1
    kind: CandidateKind | None = None  # where the plan came from
    phases: PhaseTimes | None = None  # seconds per phase: apply, train, eval, other
    test_accuracy: float | None = None
    rung: int | None = None  # the highest rung reached (None: stored before rungs existed, i.e. one rung)
    rungs: list[Any] | None = None  # [[steps, accuracy, loss(, kl)], ...], one per rung reached (older: no loss)
    final: FinalResult | None = None  # finalize's steps, validation and test accuracy, weights file and SHA-256
    # {"predicted_ms": the profile's prediction; front members also "measured_ms", "p10_ms", "p90_ms", "runs";
    # under a latency cap also "cap_ms", "noise_ms" and "over_cap" (storage.exceeds_cap)}
    device_latency: dict[str, Any] | None = None
    perplexity: float | None = None  # a language-model study's score: validation perplexity, lower is better
    memory: float | None = None  # a language-model study's cost: weights plus KV cache at its context, bytes

    def accuracy_at(self, rung: int) -> float | None:
        """Validation accuracy after rung ``rung``'s fine-tune (``None`` when the candidate did not reach it)."""
        if self.rungs is None:
            return self.accuracy if rung == 0 and self.status is Status.COMPLETE else None
        return float(self.rungs[rung][1]) if rung < len(self.rungs) else None

    def accuracy_after(self, steps: int | None) -> float | None:
        """Validation accuracy after ``steps`` fine-tune steps (a rung's end); ``None``: not measured there.

        A candidate stored before rungs existed (``rungs`` NULL) is only comparable with others like it
        (``steps=None``): its step count is unknown.
        """
        if self.rungs is None:
            return self.accuracy if steps is None and self.status is Status.COMPLETE else None
        return next((float(r[1]) for r in self.rungs if r[0] == steps), None)

    def score_after(self, steps: int | None, score: str = "accuracy") -> float | None:
        """The rung score after ``steps`` fine-tune steps, higher is better: the accuracy, minus the validation
        cross-entropy (``score="loss"``), or minus the mean KL divergence from the dense model on the teacher's
        pool (``score="kl"``); ``None`` where it was not measured (e.g. before losses were kept)."""
        if score == "accuracy":
            return self.accuracy_after(steps)
        entry = next((r for r in self.rungs or [] if r[0] == steps), None)
        at = 3 if score == "kl" else 2
        return -float(entry[at]) if entry is not None and len(entry) > at and entry[at] is not None else None

    def perplexity_after(self, steps: int | None) -> float | None:
        """A language model's validation perplexity after ``steps`` recovery steps (``exp`` of the rung's loss);
        ``None`` where it was not measured. Without rungs, the stored perplexity (``steps=None`` only)."""
        if self.rungs is None:
            return self.perplexity if steps is None and self.status is Status.COMPLETE else None
        entry = next((r for r in self.rungs if r[0] == steps), None)
        return math.exp(float(entry[2])) if entry is not None and len(entry) > 2 else None

    @property
    def top_steps(self) -> int | None:
        """Fine-tune steps of the highest rung reached (``None``: stored before rungs, or none reached)."""
        return int(self.rungs[-1][0]) if self.rungs else None

    @property
    def top_rung(self) -> int:
        """The highest rung whose accuracy is known (-1: none)."""
        if self.rungs is None:
            scored = self.accuracy is not None or self.perplexity is not None
            return 0 if scored and self.status is Status.COMPLETE else -1
        return len(self.rungs) - 1

    @property
    def latency(self) -> float | None:
        """Latency in ms, the ``latency`` objective: measured at the first batch size where every candidate is
        (``evaluate.latency``), else the device profile's prediction (a study that limits or ranks by it)."""
        if self.latency_ms:
            return float(next(iter(self.latency_ms.values())))
        predicted = (self.device_latency or {}).get("predicted_ms")
        return None if predicted is None else float(predicted)

    @property
    def prediction_error(self) -> float | None:
        """``|predicted - measured| / measured`` of the end-to-end latency (front members after a run)."""
        d = self.device_latency or {}
        if d.get("predicted_ms") is None or not d.get("measured_ms"):
            return None
        return abs(float(d["predicted_ms"]) - float(d["measured_ms"])) / float(d["measured_ms"])

    @property
    def over_cap(self) -> bool:
        """Measured end to end over the study's latency cap by more than the measurement's noise (never "within
        the budget": off the front, never the best within the cap)."""
        return bool((self.device_latency or {}).get("over_cap"))

    def objective(self, name: Objective | str) -> float | None:
        """This candidate's value of objective ``name`` (``None`` when not measured)."""
        objective = Objective(name)
        return self.latency if objective is Objective.LATENCY else getattr(self, objective.value)


@dataclass(frozen=True)
class SubmissionRecord:
    """A submitted study: its validated config (JSON) and where it stands (queued, running, done, failed)."""

    id: int
    study: str
    config: dict[str, Any]
    status: str
    worker: str | None
    error: str | None
    created: datetime
    updated: datetime


def _columns(record: type[Any], row: Any) -> dict[str, Any]:
    """The columns of ORM ``row`` that ``record`` (a dataclass of the same field names) holds."""
    return {f.name: getattr(row, f.name) for f in fields(record)}


def study_record(st: StudyTable) -> StudyRecord:
    return StudyRecord(**_columns(StudyRecord, st))


def candidate_row(c: CandidateTable) -> CandidateRow:
    return CandidateRow(
        **{
            **_columns(CandidateRow, c),
            "status": Status(c.status),
            "attempts": c.attempts or 1,
            "kind": CandidateKind(c.kind) if c.kind else None,
            "phases": PhaseTimes.from_json(c.phases) if c.phases else None,
            "final": FinalResult.from_json(c.final) if c.final else None,
        }
    )


def submission_record(t: SubmissionTable) -> SubmissionRecord:
    return SubmissionRecord(**_columns(SubmissionRecord, t))
