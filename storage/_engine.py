"""Storage URLs and engines: ours and Optuna's, over the same database.

SQLite gets WAL, a 30 s busy timeout and foreign keys; PostgreSQL gets
``psycopg`` (when the URL names no driver), pre-ping and a 5 s connect
timeout. Creating tables is retried when workers starting together race to
create them (see :func:`create_racing`).

A *read-only* engine never writes: SQLite files are opened with
``mode=ro`` and ``query_only`` (no WAL switch, no journal), PostgreSQL
sessions with ``default_transaction_read_only``. An in-memory SQLite URL
(``sqlite://``) is refused: a study in it would vanish when the process exits.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine, event, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from sqlalchemy.orm import Session

__all__ = ["create_racing", "engine_for", "missing_sqlite_file", "optuna_storage", "parse_url", "swap"]

T = TypeVar("T")

_ATTEMPTS = 5


def parse_url(url: str) -> URL:
    """``url`` parsed and checked: SQLite or PostgreSQL (``psycopg`` by default); one-line ValueError otherwise."""
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
    if backend == "sqlite" and _in_memory(parsed):
        raise ValueError(
            f"storage URL {url!r} is an in-memory database: the study would be lost when the process exits; "
            "use a file, e.g. sqlite:///prunetune.db"
        )
    return parsed


def _in_memory(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or url.query.get("mode") == "memory" or db.startswith("file::memory:")


def missing_sqlite_file(url: str) -> str | None:
    """The file a SQLite ``url`` names when that file does not exist (``None`` for other URLs, or in memory)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = _sqlite_path(parsed)
    return db if not Path(db).is_file() else None


def _sqlite_path(url: URL) -> str:
    """The file of a SQLite URL (also for ``sqlite:///file:PATH?mode=ro&uri=true``)."""
    db = url.database or ""
    if url.query.get("uri") and db.startswith("file:"):
        return urllib.parse.unquote(db[len("file:") :].split("?")[0])
    return db


def _engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}


def engine_for(url: URL, *, read_only: bool = False) -> Engine:
    """An engine for ``url`` (see the module docs); ``read_only`` engines cannot write, by construction."""
    sqlite = url.get_backend_name() == "sqlite"
    if read_only and sqlite:
        path = Path(_sqlite_path(url)).resolve()
        target = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True, timeout=30))
    elif read_only:
        kwargs = _engine_kwargs(url)
        kwargs["connect_args"] = {**kwargs["connect_args"], "options": "-c default_transaction_read_only=on"}
        return create_engine(url, **kwargs)
    else:
        engine = create_engine(url, **_engine_kwargs(url))
    if sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            if read_only:
                cur.execute("PRAGMA query_only=ON")
            else:
                _switch_to_wal(cur)
                cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _switch_to_wal(cur: Any, *, seconds: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the file.

    Switching a new file to WAL while another process does the same may answer
    ``database is locked`` at once, without waiting for the busy timeout
    (SQLite's deadlock avoidance): the switch is tried again, backing off, for
    up to ``seconds`` (the busy timeout's length), as a writer waits for a lock.
    """
    deadline = time.monotonic() + seconds
    pause = 0.01
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


def _lost_a_creation_race(exc: Exception) -> bool:
    """True for the errors of a worker that lost the race to create tables another worker was creating.

    PostgreSQL's catalog is not transactional for ``CREATE TABLE IF NOT EXISTS``
    (``IntegrityError``/``ProgrammingError``: duplicate type or relation); on a
    fresh SQLite file, SQLAlchemy's check-then-create lets two processes both
    see no table (``OperationalError: table ... already exists``), and switching
    the new file to WAL while another process does the same may answer
    ``database is locked`` without waiting (SQLite's deadlock avoidance).
    """
    if isinstance(exc, IntegrityError | ProgrammingError):
        return True
    text = str(exc.orig or exc) if isinstance(exc, OperationalError) else ""
    return any(m in text for m in ("already exists", "database is locked", "duplicate column"))


def create_racing(create: Callable[[], T]) -> T:
    """``create()``, tried again (up to 5 times, backing off) when it lost a table-creation race."""
    for attempt in range(_ATTEMPTS):
        try:
            return create()
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if attempt == _ATTEMPTS - 1 or not _lost_a_creation_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError("unreachable: the last attempt returns or raises")


def optuna_storage(url: URL) -> RDBStorage:
    """Optuna's RDB storage on the database of ``url`` (its tables are created once, race-safe)."""
    import optuna

    rendered = url.render_as_string(hide_password=False)
    return create_racing(lambda: optuna.storages.RDBStorage(rendered, engine_kwargs=_engine_kwargs(url)))


def swap(session: Session, table: Any, *conditions: Any, **values: Any) -> int:
    """Compare-and-swap: set ``values`` on the rows of ``table`` that still match ``conditions``; how many.

    One UPDATE ... WHERE: of two workers racing for the same row, exactly one
    sees 1 (it owns the row now); the other sees 0 and leaves it alone.
    """
    done = session.execute(update(table).where(*conditions).values(**values))
    return int(done.rowcount)  # type: ignore[attr-defined]
