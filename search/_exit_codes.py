"""What the ``prunetune`` CLI says when a command fails: one place for every expected exception family.

Exit codes:

* ``0`` done; ``2`` bad input — a config, flag, spec, budget, plan, weights
  file, export, storage URL or file the user named is wrong (one line on stderr
  naming the value and the rule or what to do);
* ``3`` the study's database is damaged (:class:`storage.StoreDamagedError`):
  nothing was read or written; restore it or start a new file;
* ``130`` interrupted (Ctrl-C, SIGINT) and ``143`` stopped (SIGTERM): the
  first signal stops any command within moments, its output flushed and one
  line on stderr (see :mod:`spaces.runtime._interrupt`): at once where the command has
  no safe points (``inspect``, ``profile``, ``export``, ``report``, a study's
  preparation; a store write in progress ends first), or at the candidate
  loop's next safe point (``run``, ``finalize``, ``worker``); the study keeps
  every finished candidate, the interrupted one is released and evaluated
  again by the next run, and an export or a report leaves ``--out`` as it was.
  A second signal ends the process at once; the next run takes its candidate
  over;
* ``1`` a bug: anything :func:`explain` does not know keeps its traceback (a bug
  must stay visible), followed by a line saying how to report it.
"""

from __future__ import annotations

import pickle

from spaces import PruneTuneError, first_line

__all__ = ["EXIT_BAD_INPUT", "EXIT_BUG", "EXIT_INTERRUPTED", "EXIT_STORE_DAMAGED", "REPORT_A_BUG", "explain"]

EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_STORE_DAMAGED = 3
EXIT_INTERRUPTED = 130
REPORT_A_BUG = (
    "prunetune: internal error (a bug, not your input): please report it with the traceback above, "
    "the command and `pip freeze`"
)


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def explain(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for an expected failure; ``None`` for a bug."""
    from storage import StoreDamagedError

    if isinstance(exc, StoreDamagedError):
        return EXIT_STORE_DAMAGED, first_line(exc)
    if isinstance(exc, PruneTuneError | ValueError):
        return EXIT_BAD_INPUT, first_line(exc)
    if isinstance(exc, OSError):
        where = " -> ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
        return EXIT_BAD_INPUT, f"{exc.strerror or first_line(exc)}: {where}" if where else first_line(exc)
    if isinstance(exc, pickle.UnpicklingError):
        return EXIT_BAD_INPUT, f"a file could not be read without unpickling code: {first_line(exc)}"
    module = type(exc).__module__
    if module.startswith(("sqlalchemy", "optuna")):
        from sqlalchemy.exc import SQLAlchemyError

        from storage import store_error

        root = _root(exc)
        if isinstance(root, SQLAlchemyError) or type(root).__module__.startswith("sqlite3"):
            err = store_error(root, "the study database")
            code = EXIT_STORE_DAMAGED if isinstance(err, StoreDamagedError) else EXIT_BAD_INPUT
            return code, first_line(err)
        return EXIT_BAD_INPUT, f"storage: {first_line(root)}"
    if module.startswith("safetensors"):
        return EXIT_BAD_INPUT, f"a safetensors file is damaged or is not one: {first_line(exc)}"
    return None
