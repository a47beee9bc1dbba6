"""``StudyStore``: studies, candidates and the Pareto front in one SQL database.

One URL serves everything (SQLite embedded by default, PostgreSQL for many
workers). Every write is one transaction: a killed process never leaves a
half-written candidate, and the ``pareto`` table is rewritten in the same
transaction that completes a candidate, so outside readers can query the
current front with plain SQL::

    SELECT c.* FROM prunetune_candidates c
    JOIN prunetune_pareto p ON p.candidate_id = c.id
    JOIN prunetune_studies s ON s.id = c.study_id WHERE s.name = 'my-study';

Our tables are prefixed ``prunetune_`` because Optuna's RDB storage shares the
database (it owns ``studies``, ``trials``, ...).

Workers: a candidate is RUNNING under one ``worker`` ("host:pid") that renews
its ``heartbeat``; :meth:`StudyStore.claim_stale` hands the candidates of a
dead worker (same host and the process is gone, or a heartbeat older than the
grace period) to a live one, so nothing a crash interrupted is lost or done twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from spaces import PruneTuneError
from spaces._errors import first_line
from storage._pareto import pareto_front

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "CandidateRow",
    "StoreError",
    "StudyFullError",
    "StudyMismatchError",
    "StudyStore",
]

SCHEMA_VERSION = 1
STATUSES = ("RUNNING", "COMPLETE", "FAIL", "PRUNED")


class StoreError(PruneTuneError):
    """The database cannot be reached or used."""


class StudyMismatchError(PruneTuneError, ValueError):
    """A study name is reused with a different model, data or budget."""


class StudyFullError(PruneTuneError):
    """The study already holds as many candidates as it may (``reserve(limit=...)``)."""


def _now() -> datetime:
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    pass


class _Meta(_Base):
    __tablename__ = "prunetune_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class _Study(_Base):
    __tablename__ = "prunetune_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    model_spec: Mapped[str] = mapped_column(Text)
    data_spec: Mapped[str] = mapped_column(Text)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    space_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Candidate(_Base):
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
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class _Pareto(_Base):
    __tablename__ = "prunetune_pareto"
    study_id: Mapped[int] = mapped_column(ForeignKey("prunetune_studies.id", ondelete="CASCADE"), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("prunetune_candidates.id", ondelete="CASCADE"), primary_key=True
    )


@dataclass(frozen=True)
class CandidateRow:
    id: int
    trial_number: int | None
    plan: str
    plan_hash: str
    status: str
    accuracy: float | None
    macs: float | None
    params: float | None
    bytes: float | None
    latency_ms: dict[str, Any] | None
    seconds: float | None
    error: str | None
    history: list[Any] | None = None
    artifact: str | None = None
    worker: str | None = None
    attempts: int = 1

    @property
    def latency(self) -> float | None:
        """Latency in ms at the first measured batch size (the ``latency`` objective)."""
        return next(iter(self.latency_ms.values())) if self.latency_ms else None

    def objective(self, name: str) -> float | None:
        return self.latency if name == "latency" else getattr(self, name)


def _row(c: _Candidate) -> CandidateRow:
    return CandidateRow(
        c.id, c.trial_number, c.plan, c.plan_hash, c.status, c.accuracy, c.macs, c.params, c.bytes,
        c.latency_ms, c.seconds, c.error, c.history, c.artifact, c.worker, c.attempts or 1,
    )  # fmt: skip


OBJECTIVES = ("accuracy", "macs", "params", "bytes", "latency")


def _engine(url: str) -> Engine:
    if not isinstance(url, str) or not url:
        raise ValueError(f"storage URL must be a non-empty string like sqlite:///prunetune.db, got {url!r}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"malformed storage URL {url!r}: use sqlite:///path.db or postgresql+psycopg://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"storage URL {url!r} names backend {backend!r}; PruneTune supports sqlite and postgresql")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 5})


class StudyStore:
    """The study store. Thread- and process-safe through the database's transactions.

    Contract: every public method is one transaction; ``reserve`` is the only
    way a plan enters a study and fails (returns ``None``) when the same plan
    hash is already there, so no plan is evaluated twice, even by two workers.
    """

    def __init__(self, url: str = "sqlite:///prunetune.db") -> None:
        self.url = url
        self._engine = _engine(url)
        for attempt in range(5):
            try:
                self._create_schema()
                break
            except OperationalError as exc:
                raise StoreError(f"cannot open storage {self.display_url}: {first_line(exc.orig or exc)}") from None
            except (IntegrityError, ProgrammingError):
                # workers starting together race to create the tables (PostgreSQL's catalog is not
                # transactional for CREATE TABLE IF NOT EXISTS); the loser retries and finds them
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _create_schema(self) -> None:
        _Base.metadata.create_all(self._engine)
        with Session(self._engine) as s, s.begin():
            meta = s.get(_Meta, "schema_version")
            if meta is None:
                s.add(_Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(meta.value) != SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.display_url} has schema version {meta.value}, this PruneTune uses {SCHEMA_VERSION}"
                )

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with its driver made explicit (what Optuna's RDBStorage is given)."""
        return self._engine.url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The URL with its password hidden (for messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}  # engines are not picklable: rebuilt on the other side

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                yield s
        except (PruneTuneError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            raise StoreError(f"storage {self.display_url}: {first_line(orig)}") from None

    # ---------------------------------------------------------------- studies
    def ensure_study(
        self,
        name: str,
        *,
        model_spec: str,
        data_spec: str,
        budget: Mapping[str, Any],
        space_options: Mapping[str, Any],
        base_cost: Mapping[str, Any],
        base_accuracy: float | None = None,
    ) -> int:
        """The id of study ``name``, created if new; a reused name must match model, data and budget."""
        fields = {
            "model_spec": model_spec,
            "data_spec": data_spec,
            "budget": dict(budget),
            "space_options": dict(space_options),
            "base_cost": dict(base_cost),
            "base_accuracy": base_accuracy,
        }
        try:
            return self._ensure_study(name, fields)
        except IntegrityError:  # another worker created it at the same moment: use (and check) theirs
            return self._ensure_study(name, fields)

    def _ensure_study(self, name: str, fields: dict[str, Any]) -> int:
        with self._session() as s:
            study = s.scalar(select(_Study).where(_Study.name == name))
            if study is None:
                study = _Study(name=name, **fields)
                s.add(study)
                s.flush()
                return study.id
            for field in ("model_spec", "data_spec", "budget"):
                want = fields[field]
                have = getattr(study, field)
                if have != want:
                    raise StudyMismatchError(
                        f"study {name!r} exists with {field}={json.dumps(have)}, not {json.dumps(want)}: "
                        "use another study name"
                    )
            return study.id

    def study(self, name: str) -> dict[str, Any]:
        with self._session() as s:
            st = s.scalar(select(_Study).where(_Study.name == name))
            if st is None:
                raise ValueError(f"no study named {name!r} in {self.display_url}")
            return {
                "id": st.id, "name": st.name, "model_spec": st.model_spec, "data_spec": st.data_spec,
                "budget": st.budget, "space_options": st.space_options, "base_cost": st.base_cost,
                "base_accuracy": st.base_accuracy, "created": st.created,
            }  # fmt: skip

    def study_names(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(_Study.name).order_by(_Study.id)))

    # ---------------------------------------------------------------- candidates
    def reserve(
        self,
        study_id: int,
        plan_json: str,
        plan_hash: str,
        trial_number: int | None = None,
        *,
        worker: str | None = None,
        limit: int | None = None,
    ) -> int | None:
        """Insert a RUNNING candidate owned by ``worker``; ``None`` if this plan is already in the study.

        With ``limit``, raises :class:`StudyFullError` (and writes nothing) when
        the study already holds ``limit`` candidates of any status. Reservations
        are serialised per study (a row lock on PostgreSQL, the write lock on
        SQLite), so workers racing for the last places never overshoot.
        """
        try:
            with self._session() as s:
                s.execute(select(_Study.id).where(_Study.id == study_id).with_for_update())
                c = _Candidate(
                    study_id=study_id,
                    trial_number=trial_number,
                    plan=plan_json,
                    plan_hash=plan_hash,
                    status="RUNNING",
                    worker=worker,
                )
                s.add(c)
                s.flush()  # takes SQLite's write lock before counting
                if limit is not None:
                    n = s.scalar(select(func.count()).where(_Candidate.study_id == study_id)) or 0
                    if n > limit:
                        raise StudyFullError(f"study already holds its {limit} candidates")
                return c.id
        except IntegrityError:
            return None

    def count(self, study_id: int, status: str | None = None) -> int:
        with self._session() as s:
            q = select(func.count()).where(_Candidate.study_id == study_id)
            if status is not None:
                q = q.where(_Candidate.status == status)
            return int(s.scalar(q) or 0)

    def heartbeat(self, candidate_id: int) -> None:
        """Tell other workers that the candidate's worker is alive."""
        with self._session() as s:
            s.execute(update(_Candidate).where(_Candidate.id == candidate_id).values(heartbeat=_now()))

    def claim_stale(
        self, study_id: int, worker: str, *, grace_seconds: float, is_dead: Callable[[str | None], bool]
    ) -> list[CandidateRow]:
        """Take over the RUNNING candidates of stopped workers; returns those now owned by ``worker``.

        A candidate is stale when ``is_dead(its worker)`` or its heartbeat is
        older than ``grace_seconds``. Each is claimed by compare-and-swap on its
        owner, so two workers never claim the same candidate; its ``attempts``
        goes up by one and its previous worker is recorded in ``error``.
        """
        cutoff = _now() - timedelta(seconds=grace_seconds)
        claimed = []
        with self._session() as s:
            rows = list(
                s.execute(
                    select(_Candidate.id, _Candidate.worker, _Candidate.heartbeat).where(
                        _Candidate.study_id == study_id, _Candidate.status == "RUNNING"
                    )
                )
            )
        for cid, owner, beat in rows:
            if owner == worker:
                continue
            if beat is not None and beat.tzinfo is None:
                beat = beat.replace(tzinfo=UTC)  # SQLite returns naive datetimes
            if not (is_dead(owner) or beat is None or beat < cutoff):
                continue
            with self._session() as s:
                done = s.execute(
                    update(_Candidate)
                    .where(
                        _Candidate.id == cid,
                        _Candidate.status == "RUNNING",
                        _Candidate.worker.is_(owner) if owner is None else _Candidate.worker == owner,
                    )
                    .values(
                        worker=worker,
                        heartbeat=_now(),
                        attempts=_Candidate.attempts + 1,
                        error=f"retried: worker {owner} stopped while evaluating it",
                    )
                )
                if done.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(cid)
        with self._session() as s:
            return [_row(c) for c in s.scalars(select(_Candidate).where(_Candidate.id.in_(claimed)))] if claimed else []

    def finish(
        self,
        candidate_id: int,
        status: str,
        *,
        accuracy: float | None = None,
        cost: Mapping[str, float] | None = None,
        latency_ms: Mapping[int, float] | None = None,
        seconds: float | None = None,
        error: str | None = None,
        history: Sequence[Sequence[float]] | None = None,
        artifact: str | None = None,
        trial_number: int | None = None,
        objectives: Sequence[str] = ("accuracy", "macs"),
    ) -> None:
        """Record a candidate's outcome and, in the same transaction, the study's Pareto front."""
        if status not in STATUSES or status == "RUNNING":
            raise ValueError(f"status must be one of COMPLETE, FAIL, PRUNED, got {status!r}")
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"objectives must be among {', '.join(OBJECTIVES)}, got {bad[0]!r}")
        with self._session() as s:
            c = s.get(_Candidate, candidate_id)
            if c is None:
                raise ValueError(f"no candidate with id {candidate_id}")
            c.status, c.accuracy, c.seconds, c.error = status, accuracy, seconds, error
            if cost is not None:
                c.macs, c.params, c.bytes = cost.get("macs"), cost.get("params"), cost.get("bytes")
            c.latency_ms = {str(k): v for k, v in latency_ms.items()} if latency_ms else None
            c.history = [list(h) for h in history] if history else None
            c.artifact = artifact
            if trial_number is not None:
                c.trial_number = trial_number
            s.flush()
            self._update_front(s, c.study_id, objectives)

    def fail_running(self, study_id: int, reason: str = "left RUNNING by a stopped worker") -> int:
        """Mark the study's RUNNING candidates FAIL (after a crash); returns how many."""
        with self._session() as s:
            rows = s.scalars(select(_Candidate).where(_Candidate.study_id == study_id, _Candidate.status == "RUNNING"))
            n = 0
            for c in rows:
                c.status, c.error = "FAIL", reason
                n += 1
            return n

    def delete(self, candidate_id: int) -> None:
        """Remove a candidate (e.g. a failed one, so that its plan may be retried)."""
        with self._session() as s:
            c = s.get(_Candidate, candidate_id)
            if c is not None:
                s.delete(c)

    def candidate(
        self, study_id: int, *, trial_number: int | None = None, plan_hash: str | None = None
    ) -> CandidateRow:
        """One candidate by trial number or plan hash (ValueError if there is none)."""
        with self._session() as s:
            q = select(_Candidate).where(_Candidate.study_id == study_id)
            if trial_number is not None:
                q = q.where(_Candidate.trial_number == trial_number)
            if plan_hash is not None:
                q = q.where(_Candidate.plan_hash == plan_hash)
            c = s.scalars(q.order_by(_Candidate.id)).first()
            if c is None:
                what = f"trial {trial_number}" if trial_number is not None else f"plan {plan_hash}"
                raise ValueError(f"the study has no candidate for {what}")
            return _row(c)

    def candidates(self, study_id: int, status: str | None = None) -> list[CandidateRow]:
        with self._session() as s:
            q = select(_Candidate).where(_Candidate.study_id == study_id)
            if status is not None:
                q = q.where(_Candidate.status == status)
            return [_row(c) for c in s.scalars(q.order_by(_Candidate.id))]

    def front(self, study_id: int) -> list[CandidateRow]:
        with self._session() as s:
            q = (
                select(_Candidate)
                .join(_Pareto, _Pareto.candidate_id == _Candidate.id)
                .where(_Pareto.study_id == study_id)
                .order_by(_Candidate.macs, _Candidate.id)
            )
            return [_row(c) for c in s.scalars(q)]

    @staticmethod
    def _update_front(s: Session, study_id: int, objectives: Sequence[str]) -> None:
        done = [
            _row(c)
            for c in s.scalars(
                select(_Candidate).where(_Candidate.study_id == study_id, _Candidate.status == "COMPLETE")
            )
        ]
        points = []
        for c in done:
            vals = []
            for obj in objectives:
                v = c.objective(obj)
                vals.append(None if v is None else (-v if obj == "accuracy" else v))  # minimise all
            points.append(vals)
        keep = pareto_front(points)
        s.query(_Pareto).filter(_Pareto.study_id == study_id).delete()
        for i in keep:
            s.add(_Pareto(study_id=study_id, candidate_id=done[i].id))
