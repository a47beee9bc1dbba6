"""The SQL study store (SQLAlchemy): studies, candidates, plans, metrics and the Pareto front.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL serves many workers.
"""

from storage._pareto import pareto_front
from storage._store import SCHEMA_VERSION, STATUSES, CandidateRow, StoreError, StudyMismatchError, StudyStore

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "CandidateRow",
    "StoreError",
    "StudyMismatchError",
    "StudyStore",
    "pareto_front",
]
