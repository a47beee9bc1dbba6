"""What every route of the service shares: the store (read and write sides), the queue, and cached pages.

Pages and figures are cached per study and rebuilt only when the study
changes (:meth:`ServiceState.cached`): under load, readers share one build.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fastapi import HTTPException, Request

from search.operations._report_data import report_extras
from spaces import PruneTuneError, first_line
from storage import CandidateRow, ReportExtras, StudyRecord, StudyStore, Submissions

__all__ = ["ServiceState", "state_of"]

T = TypeVar("T")


@dataclass
class ServiceState:
    """The service's store: read through a read-only engine, written (submissions only) through another."""

    reader: StudyStore
    queue: Submissions
    allowed: frozenset[str]  # the ``package.module:factory`` specs submitted studies may name
    _cache: dict[tuple[str, str], tuple[tuple[Any, ...], Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, url: str, factories: Collection[str]) -> ServiceState:
        writer = StudyStore(url)  # creates or upgrades the schema; only submissions are written through it
        return cls(StudyStore.open_existing(url), Submissions(writer), frozenset(factories))

    def study_or_404(self, name: str) -> StudyRecord:
        try:
            return self.reader.study(name)
        except ValueError:
            raise HTTPException(404, f"no study named {name!r}") from None

    def row_or_404(self, name: str, n: int) -> tuple[StudyRecord, CandidateRow]:
        info = self.study_or_404(name)
        try:
            return info, self.reader.candidate(info.id, trial_number=n)
        except ValueError:
            raise HTTPException(404, f"study {name!r} has no trial {n}") from None

    def front_ids(self, study_id: int) -> set[int]:
        return {r.id for r in self.reader.front(study_id)}

    def version(self, study_id: int) -> tuple[Any, ...]:
        """What the study's pages show changes only with this: its candidates, finished, finalized, and front."""
        return (*self.reader.activity(study_id), tuple(sorted(self.front_ids(study_id))))

    def cached(self, name: str, what: str, build: Callable[[], T]) -> T:
        """``build()``'s value for study ``name``, rebuilt only when the study's :meth:`version` changes.

        A page or a figure costs seconds of plotly work; hundreds of readers of a
        study that changes every few seconds then cost one build per change.
        """
        key = self.version(self.reader.study(name).id)
        with self._lock:
            hit = self._cache.get((name, what))
        if hit is not None and hit[0] == key:
            return cast(T, hit[1])
        value = build()
        with self._lock:
            self._cache[(name, what)] = (key, value)
        return value

    def extras_of(self, name: str) -> ReportExtras:
        """The report's model-dependent data, rebuilt only when the study's candidates or front change."""
        return self.cached(name, "extras", lambda: self._extras_now(name))

    def _extras_now(self, name: str) -> ReportExtras:
        try:
            return report_extras(self.reader, name, trusted=lambda spec: spec in self.allowed)
        except (PruneTuneError, ValueError, OSError) as exc:
            why = f"the base model could not be rebuilt: {first_line(exc)}"
            return ReportExtras(notes={"structure": why, "filters": why})


def state_of(request: Request) -> ServiceState:
    """The routes' dependency: the app's :class:`ServiceState`."""
    state: ServiceState = request.app.state.service
    return state
