"""The SQL study store (SQLAlchemy): studies, candidates, plans, metrics and the Pareto front.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL serves many workers.
"""

from storage._pareto import pareto_front
from storage._report import candidates_frame, plan_summary, write_report
from storage._store import (
    OBJECTIVES,
    SCHEMA_VERSION,
    STATUSES,
    CandidateRow,
    StoreError,
    StudyFullError,
    StudyMismatchError,
    StudyStore,
)

__all__ = [
    "OBJECTIVES",
    "SCHEMA_VERSION",
    "STATUSES",
    "CandidateRow",
    "StoreError",
    "StudyFullError",
    "StudyMismatchError",
    "StudyStore",
    "candidates_frame",
    "pareto_front",
    "plan_summary",
    "write_report",
]
