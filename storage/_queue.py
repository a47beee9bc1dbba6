"""Studies submitted to the service, in the store: a queue that workers claim from, one transaction per step.

``prunetune serve`` adds a validated config (:meth:`Submissions.submit`,
``queued``); a worker (``prunetune worker``) claims the oldest one by
compare-and-swap on its status (:meth:`Submissions.claim`, ``running``), so two
workers never run the same submission, runs it with the normal search and marks
it ``done`` or ``failed`` with a one-line reason (:meth:`Submissions.finish`); a
submission whose worker stopped is queued again (:meth:`Submissions.requeue_stopped`).
A submission's study name is unique in the queue, and a name the store already
holds as a study is refused, so a submission never mixes into an existing study.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage._engine import swap
from storage._schema import StudyTable, SubmissionRecord, SubmissionTable, now, submission_record
from storage._store_errors import StoreError

if TYPE_CHECKING:
    from storage._store import StudyStore

__all__ = ["SubmissionStatus", "Submissions"]


class SubmissionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Submissions:
    """The submissions of one store (the service writes them; workers claim and finish them)."""

    def __init__(self, store: StudyStore) -> None:
        self.store = store

    def submit(self, study: str, config: Mapping[str, Any]) -> SubmissionRecord:
        """Queue ``config`` (validated JSON) under the study name ``study``; ValueError if the name is taken."""
        taken = ValueError(f"study name {study!r} is taken in {self.store.display_url}: choose another search.study")
        try:
            with self.store._session() as s:
                if s.scalar(select(StudyTable.id).where(StudyTable.name == study)) is not None:
                    raise taken
                row = SubmissionTable(study=study, config=dict(config), status=SubmissionStatus.QUEUED)
                s.add(row)
                s.flush()
                return submission_record(row)
        except IntegrityError:
            raise taken from None

    def get(self, submission_id: int) -> SubmissionRecord:
        with self.store._session() as s:
            row = s.get(SubmissionTable, submission_id)
            if row is None:
                raise ValueError(f"no submission {submission_id} in {self.store.display_url}")
            return submission_record(row)

    def all(self) -> list[SubmissionRecord]:
        with self.store._session() as s:
            return [submission_record(r) for r in s.scalars(select(SubmissionTable).order_by(SubmissionTable.id))]

    def claim(self, worker: str) -> SubmissionRecord | None:
        """The oldest queued submission, now ``running`` under ``worker``; ``None`` when the queue is empty."""
        while True:
            with self.store._session() as s:
                first = s.scalar(
                    select(SubmissionTable.id)
                    .where(SubmissionTable.status == SubmissionStatus.QUEUED)
                    .order_by(SubmissionTable.id)
                    .limit(1)
                )
                if first is None:
                    return None
                queued = (SubmissionTable.id == first, SubmissionTable.status == SubmissionStatus.QUEUED)
                if swap(s, SubmissionTable, *queued, status=SubmissionStatus.RUNNING, worker=worker, updated=now()):
                    return submission_record(s.get_one(SubmissionTable, first))
            # another worker took it between the select and the update: try the next one

    def requeue_stopped(self, is_dead: Callable[[str | None], bool]) -> list[int]:
        """Queue again the running submissions whose worker stopped (``is_dead(worker)``); returns their ids.

        The search itself resumes where it was: the study keeps its finished candidates.
        """
        with self.store._session() as s:
            rows = list(s.execute(select(SubmissionTable.id, SubmissionTable.worker).where(
                SubmissionTable.status == SubmissionStatus.RUNNING)))  # fmt: skip
        again = []
        for sid, owner in rows:
            if not is_dead(owner):
                continue
            with self.store._session() as s:
                running = (SubmissionTable.id == sid, SubmissionTable.status == SubmissionStatus.RUNNING,
                           SubmissionTable.worker == owner)  # fmt: skip
                error = f"worker {owner} stopped: run again"
                if swap(s, SubmissionTable, *running, status=SubmissionStatus.QUEUED, worker=None, error=error,
                        updated=now()):  # fmt: skip
                    again.append(sid)
        return again

    def finish(self, submission_id: int, worker: str, *, error: str | None = None) -> None:
        """Mark ``worker``'s running submission ``done`` (or ``failed`` with ``error``)."""
        status = SubmissionStatus.FAILED if error is not None else SubmissionStatus.DONE
        with self.store._session() as s:
            mine = (
                SubmissionTable.id == submission_id,
                SubmissionTable.status == SubmissionStatus.RUNNING,
                SubmissionTable.worker == worker,
            )
            if swap(s, SubmissionTable, *mine, status=status, error=error, updated=now()) != 1:
                raise StoreError(f"submission {submission_id} is not running under worker {worker}")
