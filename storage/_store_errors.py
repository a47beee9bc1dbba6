"""The store's exceptions (all under :class:`spaces.PruneTuneError`)."""

from __future__ import annotations

from spaces import PruneTuneError

__all__ = ["StoreDamagedError", "StoreError", "StudyFullError", "StudyMismatchError"]


class StoreError(PruneTuneError):
    """The database cannot be reached or used."""


class StoreDamagedError(StoreError):
    """The database file is damaged (not a database, truncated, overwritten): nothing is read or written."""


class StudyMismatchError(PruneTuneError, ValueError):
    """A study name is reused with a different model, data or budget."""


class StudyFullError(PruneTuneError):
    """The study already holds as many candidates as it may (``reserve(limit=...)``)."""
