"""``StudyStore``: studies, candidates and the Pareto front in one SQL database.

One URL serves everything (SQLite embedded by default, PostgreSQL for many
workers), Optuna's RDB storage included (:meth:`StudyStore.optuna_storage`).
Every write is one transaction: a killed process never leaves a half-written
candidate, and the ``pareto`` table is rewritten in the same transaction that
completes a candidate, so outside readers can query the current front with
plain SQL::

    SELECT c.* FROM prunetune_candidates c
    JOIN prunetune_pareto p ON p.candidate_id = c.id
    JOIN prunetune_studies s ON s.id = c.study_id WHERE s.name = 'my-study';

The tables are declared in :mod:`storage._schema`.
Workers: a candidate is RUNNING under one ``worker`` ("host:pid") that renews
its ``heartbeat``; :meth:`StudyStore.claim_stale` hands the candidates of a
dead worker (same host and the process is gone, or a heartbeat older than the
grace period) to a live one, so nothing a crash interrupted is lost or done twice.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from spaces import Objective, PruneTuneError, Status, protected
from storage._engine import engine_for, missing_sqlite_file, optuna_storage, parse_url, swap
from storage._open import file_sha256, open_schema, store_error
from storage._pareto import exceeds_cap, write_front
from storage._records import FinalResult, PhaseTimes, StudySpec
from storage._schema import (
    CandidateRow,
    CandidateTable,
    ParetoTable,
    ProfileTable,
    StudyProfileTable,
    StudyRecord,
    StudyTable,
    candidate_row,
    now,
    study_record,
)
from storage._store_errors import StoreError, StudyFullError, StudyMismatchError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

__all__ = ["StudyStore"]

_FINISHED = tuple(s.value for s in Status if s.finished)  # what finish() records
_OBJECTIVES = tuple(o.value for o in Objective)


class StudyStore:
    """The study store. Thread- and process-safe through the database's transactions.

    Contract: every public method is one transaction; ``reserve`` is the only
    way a plan enters a study and fails (returns ``None``) when the same plan
    hash is already there, so no plan is evaluated twice, even by two workers.
    """

    def __init__(self, url: str = "sqlite:///prunetune.db", *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        parsed = parse_url(url)
        self._engine = engine_for(parsed, read_only=read_only)
        checker = None
        if not read_only and missing_sqlite_file(url) is None and parsed.get_backend_name() == "sqlite":
            checker = engine_for(parsed, read_only=True)  # an existing file is checked before it is opened to write
        try:
            with protected():  # Ctrl-C waits for the schema's creation or upgrade (spaces.runtime._interrupt)
                open_schema(self._engine, self.display_url, read_only=read_only, checker=checker)
        finally:
            if checker is not None:
                checker.dispose()

    @classmethod
    def open_existing(cls, url: str) -> StudyStore:
        """The store at ``url``, read-only: it must exist and hold PruneTune's tables; nothing is ever written.

        Unlike the constructor, refuses a SQLite file that does not exist yet (and creates nothing).
        """
        missing = missing_sqlite_file(url)
        if missing is not None:
            raise StoreError(
                f"no study database at {missing!r}: run `prunetune run CONFIG.toml` first or pass --storage"
            )
        return cls(url, read_only=True)

    def optuna_storage(self) -> RDBStorage:
        """Optuna's RDB storage on this database (its tables created race-safe, as ours are)."""
        if self.read_only:
            raise StoreError(f"storage {self.display_url} was opened read-only: Optuna's storage needs to write")
        try:
            with protected():  # Optuna creates its tables and stamps their version: never half of it
                return optuna_storage(parse_url(self.url))
        except SQLAlchemyError as exc:
            raise store_error(exc, self.display_url) from None

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with its driver made explicit (what Optuna's RDBStorage is given)."""
        return parse_url(self.url).render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The URL with its password hidden (for messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "read_only": self.read_only}  # engines are not picklable: rebuilt on the other side

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], read_only=state.get("read_only", False))  # type: ignore[misc]

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with protected(), Session(self._engine, expire_on_commit=False) as s, s.begin():
                yield s  # one transaction: a signal waits for its end (spaces.runtime._interrupt)
        except (PruneTuneError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            raise store_error(exc, self.display_url) from None

    # ---------------------------------------------------------------- studies
    def ensure_study(
        self,
        name: str,
        *,
        model_spec: str,
        data_spec: str,
        budget: Mapping[str, Any],
        space_options: StudySpec | Mapping[str, Any],
        base_cost: Mapping[str, Any],
        base_accuracy: float | None = None,
    ) -> int:
        """The id of study ``name``, created if new; a reused name must match model, data and budget."""
        fields = {
            "model_spec": model_spec,
            "data_spec": data_spec,
            "budget": dict(budget),
            "space_options": space_options.to_json() if isinstance(space_options, StudySpec) else dict(space_options),
            "base_cost": dict(base_cost),
            "base_accuracy": base_accuracy,
        }
        try:
            return self._ensure_study(name, fields)
        except IntegrityError:  # another worker created it at the same moment: use (and check) theirs
            return self._ensure_study(name, fields)

    def _ensure_study(self, name: str, fields: dict[str, Any]) -> int:
        with self._session() as s:
            study = s.scalar(select(StudyTable).where(StudyTable.name == name))
            if study is None:
                study = StudyTable(name=name, **fields)
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

    def study(self, name: str) -> StudyRecord:
        """Study ``name`` (ValueError if the store has none of that name)."""
        with self._session() as s:
            st = s.scalar(select(StudyTable).where(StudyTable.name == name))
            if st is None:
                raise ValueError(f"no study named {name!r} in {self.display_url}")
            return study_record(st)

    def study_names(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(StudyTable.name).order_by(StudyTable.id)))

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
        kind: str | None = None,
    ) -> int | None:
        """Insert a RUNNING candidate owned by ``worker``; ``None`` if this plan is already in the study.

        With ``limit``, raises :class:`StudyFullError` (and writes nothing) when the study already holds
        ``limit`` candidates; ``kind``: where the plan came from (``allocator``, ``uniform``, ``sampled``).
        Serialised per study (a row lock on PostgreSQL, SQLite's write lock): racing workers never overshoot.
        """
        try:
            with self._session() as s:
                s.execute(select(StudyTable.id).where(StudyTable.id == study_id).with_for_update())
                c = CandidateTable(
                    study_id=study_id,
                    trial_number=trial_number,
                    plan=plan_json,
                    plan_hash=plan_hash,
                    status=Status.RUNNING,
                    worker=worker,
                    kind=kind,
                )
                s.add(c)
                s.flush()  # takes SQLite's write lock before counting
                if limit is not None:
                    n = s.scalar(select(func.count()).where(CandidateTable.study_id == study_id)) or 0
                    if n > limit:
                        raise StudyFullError(f"study already holds its {limit} candidates")
                return c.id
        except IntegrityError:
            return None

    def count(self, study_id: int, status: Status | str | None = None) -> int:
        with self._session() as s:
            q = select(func.count()).where(CandidateTable.study_id == study_id)
            if status is not None:
                q = q.where(CandidateTable.status == status)
            return int(s.scalar(q) or 0)

    def activity(self, study_id: int) -> tuple[int, int, int]:
        """``(candidates, finished, finalized)`` of a study in one query: what changes when its pages must."""
        with self._session() as s:
            row = s.execute(
                select(
                    func.count(),
                    func.count().filter(CandidateTable.status != Status.RUNNING),
                    func.count(CandidateTable.test_accuracy),
                ).where(CandidateTable.study_id == study_id)
            ).one()
            return int(row[0]), int(row[1]), int(row[2])

    def heartbeat(self, candidate_id: int) -> None:
        """Tell other workers that the candidate's worker is alive."""
        with self._session() as s:
            s.execute(update(CandidateTable).where(CandidateTable.id == candidate_id).values(heartbeat=now()))

    def claim_stale(
        self, study_id: int, worker: str, *, grace_seconds: float, is_dead: Callable[[str | None], bool]
    ) -> list[CandidateRow]:
        """Take over the RUNNING candidates of stopped workers; returns those now owned by ``worker``.

        Stale: ``is_dead(its worker)`` or a heartbeat older than ``grace_seconds``. Claimed by compare-and-swap
        on the owner (never by two workers); ``attempts`` + 1, the old worker named in ``error``, rungs reset.
        """
        cutoff = now() - timedelta(seconds=grace_seconds)
        claimed = []
        with self._session() as s:
            rows = list(
                s.execute(
                    select(CandidateTable.id, CandidateTable.worker, CandidateTable.heartbeat).where(
                        CandidateTable.study_id == study_id, CandidateTable.status == Status.RUNNING
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
                won = swap(
                    s,
                    CandidateTable,
                    CandidateTable.id == cid,
                    CandidateTable.status == Status.RUNNING,
                    CandidateTable.worker.is_(owner) if owner is None else CandidateTable.worker == owner,
                    worker=worker,
                    heartbeat=now(),
                    attempts=CandidateTable.attempts + 1,
                    error=f"retried: worker {owner} stopped while evaluating it",
                    rungs=None,
                    rung=None,
                )
                if won == 1:
                    claimed.append(cid)
        with self._session() as s:
            return [candidate_row(c) for c in s.scalars(select(CandidateTable).where(CandidateTable.id.in_(claimed)))]

    def finish(
        self,
        candidate_id: int,
        status: Status | str,
        *,
        accuracy: float | None = None,
        cost: Mapping[str, float] | None = None,
        latency_ms: Mapping[int, float] | None = None,
        seconds: float | None = None,
        error: str | None = None,
        history: Sequence[Sequence[float]] | None = None,
        artifact: str | None = None,
        trial_number: int | None = None,
        objectives: Sequence[Objective | str] = (Objective.ACCURACY, Objective.MACS),
        phases: PhaseTimes | Mapping[str, float] | None = None,
        rungs: Sequence[Sequence[float | None]] | None = None,
        perplexity: float | None = None,
    ) -> bool:
        """Record a RUNNING candidate's outcome and, in the same transaction, the study's Pareto front.

        ``rungs``: ``[[steps, accuracy, loss], ...]`` of the rungs it reached (``accuracy`` is the last's;
        the validation loss may be left out). A language-model candidate gives ``perplexity`` instead of
        ``accuracy``, and ``cost["memory"]`` (weights plus KV cache, bytes) beside its parameters and bytes.
        ``False`` (nothing written) when it is already finished: a candidate run twice (Ray Tune
        retries, a slow worker's claimed candidate) is recorded once, by the first finisher (CAS).
        """
        if status not in _FINISHED:
            raise ValueError(f"status must be one of {', '.join(_FINISHED)}, got {status!r}")
        if any(o not in _OBJECTIVES for o in objectives):
            bad = next(o for o in objectives if o not in _OBJECTIVES)
            raise ValueError(f"objectives must be among {', '.join(_OBJECTIVES)}, got {bad!r}")
        with self._session() as s:
            sid = s.scalar(select(CandidateTable.study_id).where(CandidateTable.id == candidate_id))
            if sid is None:
                raise ValueError(f"no candidate with id {candidate_id}")
            # the study's row first, as reserve: one writer of its front at a time, and no deadlock
            s.execute(select(StudyTable.id).where(StudyTable.id == sid).with_for_update())
            running = (CandidateTable.id == candidate_id, CandidateTable.status == Status.RUNNING)
            if swap(s, CandidateTable, *running, status=Status(status)) != 1:
                return False
            c = s.get_one(CandidateTable, candidate_id)
            c.status, c.accuracy, c.seconds, c.error = Status(status), accuracy, seconds, error
            c.perplexity = perplexity
            if cost is not None:
                _set_costs(c, cost)
            c.latency_ms = {str(k): v for k, v in latency_ms.items()} if latency_ms else None
            c.history = [list(h) for h in history] if history else None
            if isinstance(phases, Mapping):
                phases = PhaseTimes.from_json(phases)
            c.artifact, c.phases = artifact, phases.to_json() if phases else None
            c.weights_sha256 = file_sha256(artifact) if artifact else None
            if rungs is not None or status != Status.COMPLETE:
                c.rungs = [_rung_entry(r) for r in rungs] if rungs else None
                c.rung = len(rungs) - 1 if rungs else None
            if trial_number is not None:
                c.trial_number = trial_number
            s.flush()
            write_front(s, c.study_id, [Objective(o) for o in objectives])
            return True

    def record_rung(
        self,
        candidate_id: int,
        rung: int,
        steps: int,
        accuracy: float,
        cost: Mapping[str, float],
        worker: str,
        loss: float | None = None,
        kl: float | None = None,
    ) -> bool:
        """``worker``'s RUNNING candidate reached rung ``rung`` (others compare with it to be promoted); ``kl``:
        its divergence from the dense model on the teacher's pool, where the study scores by it.

        ``False`` (nothing written) when the candidate is no longer ``worker``'s RUNNING one, e.g. another
        worker claimed it: the caller then stops evaluating it.
        """
        with self._session() as s:
            c = s.get_one(CandidateTable, candidate_id)
            if c.status != Status.RUNNING or c.worker != worker or rung > len(c.rungs or []):
                return False
            c.rungs, c.rung = [*(c.rungs or [])[:rung], _rung_entry((steps, accuracy, loss, kl))], rung
            c.macs, c.params, c.bytes = cost.get("macs"), cost.get("params"), cost.get("bytes")
            return True

    def add_rung(
        self,
        candidate_id: int,
        rung: int,
        steps: int,
        accuracy: float | None,
        *,
        artifact: str,
        loss: float | None = None,
        objectives: Sequence[Objective | str] = (Objective.ACCURACY, Objective.MACS),
        perplexity: float | None = None,
        kl: float | None = None,
    ) -> bool:
        """Extend a COMPLETE candidate by rung ``rung`` (its ``steps``, ``accuracy``, ``loss`` and, scored by the
        teacher's pool, ``kl``; its new weights; a language model's: no accuracy, its ``perplexity`` and its loss,
        the log of it).

        Compare-and-swap: only if the candidate has exactly ``rung`` rungs, so a
        rung is added once however many workers try; ``False`` (nothing written)
        otherwise. The candidate's accuracy, rung and weights become the new
        rung's, and the Pareto front is rewritten in the same transaction.
        """
        with self._session() as s:
            sid = s.scalar(select(CandidateTable.study_id).where(CandidateTable.id == candidate_id))
            if sid is None:
                raise ValueError(f"no candidate with id {candidate_id}")
            s.execute(select(StudyTable.id).where(StudyTable.id == sid).with_for_update())  # as finish: one writer
            at = (CandidateTable.id == candidate_id, CandidateTable.status == Status.COMPLETE)
            if swap(s, CandidateTable, *at, CandidateTable.rung == rung - 1, rung=rung) != 1:
                return False
            c = s.get_one(CandidateTable, candidate_id)
            c.rungs = [*(c.rungs or [])[:rung], _rung_entry((steps, accuracy, loss, kl))]
            c.accuracy = None if accuracy is None else float(accuracy)
            c.perplexity = perplexity
            c.artifact, c.weights_sha256 = artifact, file_sha256(artifact)
            s.flush()
            write_front(s, sid, [Objective(o) for o in objectives])
            return True

    def set_trial_number(self, candidate_id: int, trial_number: int) -> None:
        """Name the Optuna trial that holds finished candidate ``candidate_id``'s outcome.

        The finisher tells Optuna after ``finish`` recorded the candidate (so a plan
        is told once), then writes here the number of the trial it told or added.
        """
        with self._session() as s:
            s.get_one(CandidateTable, candidate_id).trial_number = trial_number

    def set_stopped(self, study_id: int, why: str | None) -> None:
        """Record why the study's last run stopped on its time limit (``None``: a run completed the study).

        The report, the terminal's front and the service show it (``StudyRecord.stopped``).
        """
        with self._session() as s:
            s.get_one(StudyTable, study_id).stopped = why

    def release(self, study_id: int, worker: str, reason: str = "interrupted") -> int:
        """Give up ``worker``'s RUNNING candidates (it is stopping): the next worker claims them at once.

        They stay RUNNING, without an owner, with ``reason`` in ``error``; returns how many.
        """
        with self._session() as s:
            return swap(
                s,
                CandidateTable,
                CandidateTable.study_id == study_id,
                CandidateTable.status == Status.RUNNING,
                CandidateTable.worker == worker,
                worker=None,
                error=f"{reason}: the next run evaluates it again",
            )

    def fail_running(self, study_id: int, reason: str = "left RUNNING by a stopped worker") -> int:
        """Mark the study's RUNNING candidates FAIL (after a crash); returns how many."""
        with self._session() as s:
            running = (CandidateTable.study_id == study_id, CandidateTable.status == Status.RUNNING)
            return swap(s, CandidateTable, *running, status=Status.FAIL, error=reason)

    def record_test_accuracy(
        self, candidate_id: int, accuracy: float | None, *, final: FinalResult | Mapping[str, Any] | None = None
    ) -> None:
        """A COMPLETE candidate's test accuracy (reported, never selected on) and what finalize measured."""
        with self._session() as s:
            c = s.get(CandidateTable, candidate_id)
            if c is None or c.status != Status.COMPLETE:
                raise ValueError(f"candidate {candidate_id} is not a COMPLETE candidate of this store")
            if isinstance(final, Mapping):
                final = FinalResult.from_json(final)
            c.test_accuracy, c.final = accuracy, (final.to_json() if final is not None else c.final)

    def delete(self, candidate_id: int) -> None:
        """Remove a candidate (e.g. a failed one, so that its plan may be retried)."""
        with self._session() as s:
            c = s.get(CandidateTable, candidate_id)
            if c is not None:
                s.delete(c)

    def candidate(
        self,
        study_id: int,
        *,
        id: int | None = None,  # noqa: A002 (the candidate's id, as CandidateRow.id)
        trial_number: int | None = None,
        plan_hash: str | None = None,
    ) -> CandidateRow:
        """One candidate of the study by id, trial number or plan hash (all given must match); ValueError if none."""
        keys = {"id": id, "trial": trial_number, "plan": plan_hash}
        given = {k: v for k, v in keys.items() if v is not None}
        if not given:
            raise ValueError("candidate() needs an id, a trial_number or a plan_hash")
        with self._session() as s:
            q = select(CandidateTable).where(CandidateTable.study_id == study_id)
            if id is not None:
                q = q.where(CandidateTable.id == id)
            if trial_number is not None:
                q = q.where(CandidateTable.trial_number == trial_number)
            if plan_hash is not None:
                q = q.where(CandidateTable.plan_hash == plan_hash)
            c = s.scalars(q.order_by(CandidateTable.id)).first()
            if c is None:
                what = " and ".join(f"{k} {v}" for k, v in given.items())
                raise ValueError(f"the study has no candidate for {what}")
            return candidate_row(c)

    def candidates(self, study_id: int, status: Status | str | None = None) -> list[CandidateRow]:
        with self._session() as s:
            q = select(CandidateTable).where(CandidateTable.study_id == study_id)
            if status is not None:
                q = q.where(CandidateTable.status == status)
            return [candidate_row(c) for c in s.scalars(q.order_by(CandidateTable.id))]

    def front(self, study_id: int) -> list[CandidateRow]:
        with self._session() as s:
            q = (
                select(CandidateTable)
                .join(ParetoTable, ParetoTable.candidate_id == CandidateTable.id)
                .where(ParetoTable.study_id == study_id)
                .order_by(CandidateTable.macs, CandidateTable.id)
            )
            return [candidate_row(c) for c in s.scalars(q)]

    # ---------------------------------------------------------------- device profiles
    def profile(self, key: str) -> str | None:
        """The JSON of the device profile stored under ``key`` (``spaces.DeviceProfile.key``); ``None``: none yet."""
        with self._session() as s:
            row = s.get(ProfileTable, key)
            return None if row is None else row.profile

    def save_profile(self, key: str, profile_json: str, *, device: str, runtime: str, threads: int, batch: int) -> str:
        """Store a measured profile under ``key`` unless one is there already; the stored one's JSON either way
        (two workers that measured at once keep the first, so every study reads the same tables)."""
        try:
            with self._session() as s:
                if s.get(ProfileTable, key) is None:
                    s.add(
                        ProfileTable(
                            key=key, device=device, runtime=runtime, threads=threads, batch=batch, profile=profile_json
                        )
                    )
        except IntegrityError:  # another worker stored it at the same moment
            pass
        stored = self.profile(key)
        assert stored is not None
        return stored

    def record_measured_latency(
        self,
        candidate_id: int,
        measured: Mapping[str, float],
        *,
        cap_ms: float | None = None,
        objectives: Sequence[Objective | str] = (Objective.ACCURACY, Objective.MACS),
    ) -> bool:
        """Add an end-to-end latency measurement (``measured_ms``, ``p10_ms``, ``p90_ms``, ``runs``) beside a
        candidate's prediction and, with ``cap_ms`` (the study's latency cap), the verdict on it.

        The verdict (:func:`storage.exceeds_cap`) adds ``cap_ms``, ``noise_ms`` and ``over_cap``; a candidate
        over the cap leaves the front, rewritten (with ``objectives``) in the same transaction. A candidate
        measured already keeps its measurement (``measured`` is then ignored, and may be empty) and gets a
        verdict only if it has none. ``False``: nothing written (measured and judged already).
        """
        with self._session() as s:
            sid = s.scalar(select(CandidateTable.study_id).where(CandidateTable.id == candidate_id))
            if sid is None:
                raise ValueError(f"no candidate with id {candidate_id}")
            s.execute(select(StudyTable.id).where(StudyTable.id == sid).with_for_update())  # as finish: one writer
            c = s.get_one(CandidateTable, candidate_id)
            d = dict(c.device_latency or {})
            fresh = d.get("measured_ms") is None
            if fresh:
                d.update({k: float(v) for k, v in measured.items()})
            judge = cap_ms is not None and "over_cap" not in d and d.get("measured_ms") is not None
            if not (fresh or judge):
                return False
            if judge:
                over, noise = exceeds_cap(d, float(cap_ms or 0.0))
                d.update(cap_ms=float(cap_ms or 0.0), noise_ms=noise, over_cap=over)
            c.device_latency = d
            if d.get("over_cap"):
                s.flush()
                write_front(s, sid, [Objective(o) for o in objectives])
            return True

    def over_cap(self, study_id: int) -> list[CandidateRow]:
        """The study's COMPLETE candidates measured over its latency cap (off the front; shown apart), by MACs."""
        rows = [r for r in self.candidates(study_id, Status.COMPLETE) if r.over_cap]
        return sorted(rows, key=lambda r: (r.macs or 0.0, r.id))

    # ---------------------------------------------------------------- a study's refitted profile
    def study_profile(self, study: str, key: str) -> str | None:
        """The JSON of study ``study``'s refit of the profile stored under ``key``; ``None``: none (or no study)."""
        with self._session() as s:
            q = (
                select(StudyProfileTable.profile)
                .join(StudyTable, StudyTable.id == StudyProfileTable.study_id)
                .where(StudyTable.name == study, StudyProfileTable.key == key)
            )
            return s.scalar(q)

    def save_study_profile(self, study_id: int, key: str, profile_json: str, points: Sequence[Sequence[float]]) -> None:
        """Store (or replace) the study's refit of profile ``key``, with the ``[candidate id, measured ms]`` points
        it was refitted on; the cached profile under ``key`` is left as it is. Two workers that refit at once
        (both concluding the study) keep the first one's: both were fitted on the same measurements."""
        listed = [list(p) for p in points]
        try:
            with self._session() as s:
                row = s.get(StudyProfileTable, (study_id, key))
                if row is None:
                    s.add(StudyProfileTable(study_id=study_id, key=key, profile=profile_json, points=listed))
                else:
                    row.profile, row.points = profile_json, listed
        except IntegrityError:  # another worker stored one at the same moment
            pass

    def delete_profile(self, key: str) -> None:
        """Forget the profile stored under ``key`` (``prunetune profile --force`` measures it again)."""
        with self._session() as s:
            s.query(ProfileTable).filter(ProfileTable.key == key).delete()


# the costs a latency model predicts, and the device_latency keys they are kept under
_PREDICTED = {"latency": "predicted_ms", "prefill_tps": "prefill_tps", "decode_tps": "decode_tps"}


def _set_costs(c: CandidateTable, cost: Mapping[str, float]) -> None:
    """A finished candidate's cost columns, and what the study's latency model predicts, when it has one: a
    vision profile's ``latency`` (ms), a language model's prefill and decode tokens per second."""
    c.macs, c.params, c.bytes, c.memory = cost.get("macs"), cost.get("params"), cost.get("bytes"), cost.get("memory")
    predicted = {key: float(cost[k]) for k, key in _PREDICTED.items() if cost.get(k) is not None}
    c.device_latency = predicted or None


def _rung_entry(entry: Sequence[Any]) -> list[Any]:
    """``[steps, accuracy]``, or ``[steps, accuracy, loss]`` when the loss is known and finite (JSON has no NaN),
    and ``[steps, accuracy, loss, kl]`` with the divergence from the dense model on the teacher's pool (``score =
    "kl"``); a language model's rung has no accuracy (``None``), its loss is the validation cross-entropy."""
    out: list[Any] = [int(entry[0]), None if entry[1] is None else float(entry[1])]
    if len(entry) > 2 and entry[2] is not None and math.isfinite(float(entry[2])):
        out.append(float(entry[2]))
        if len(entry) > 3 and entry[3] is not None and math.isfinite(float(entry[3])):
            out.append(float(entry[3]))
    return out
