"""Opening a store: integrity, schema creation and upgrades, read-only checks, and what database errors mean.

:func:`open_schema` runs once per :class:`~storage.StudyStore`:

1. **Integrity** (SQLite): ``PRAGMA quick_check`` (cheap: no index
   cross-checks). A file that is not a database, is truncated or was partly
   overwritten raises :class:`~storage.StoreDamagedError` before anything is
   read or written.
2. **Writable stores**: the tables are created if missing (race-safe, see
   :func:`storage._engine.create_racing`) and an older schema is upgraded in
   place (``_UPGRADES``); a newer schema is refused. The version row is
   rewritten (same value), so a file that cannot be written (permissions, a
   read-only mount, ``mode=ro``) is refused at once, not after an hour of work.
3. **Read-only stores** (``front``, ``status``, ``report``, ``export``): nothing
   is created; a database without PruneTune's tables, or with another schema
   version, is refused with a one-line message naming it.

:func:`store_error` turns a driver error into the one-line :class:`StoreError`
the user sees (damaged file, read-only file, locked, unreachable).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, SQLAlchemyError
from sqlalchemy.orm import Session

from spaces import first_line
from storage._engine import create_racing
from storage._schema import SCHEMA_VERSION, Base, MetaTable
from storage._store_errors import StoreDamagedError, StoreError

__all__ = ["file_sha256", "open_schema", "store_error"]

# SQL that takes a store from version i + 1 to i + 2 (index 0: 1 -> 2)
_UPGRADES: list[list[str]] = [
    ["ALTER TABLE prunetune_candidates ADD COLUMN weights_sha256 VARCHAR(64)"],
    [  # the submissions table is created by create_all
        "ALTER TABLE prunetune_candidates ADD COLUMN kind VARCHAR(16)",
        "ALTER TABLE prunetune_candidates ADD COLUMN phases JSON",
        "ALTER TABLE prunetune_candidates ADD COLUMN test_accuracy FLOAT",
    ],
    [
        "ALTER TABLE prunetune_candidates ADD COLUMN rung INTEGER",
        "ALTER TABLE prunetune_candidates ADD COLUMN rungs JSON",
        "ALTER TABLE prunetune_candidates ADD COLUMN final JSON",
    ],
    ["ALTER TABLE prunetune_candidates ADD COLUMN device_latency JSON"],  # prunetune_profiles: by create_all
    [],  # prunetune_study_profiles: by create_all
    ["ALTER TABLE prunetune_studies ADD COLUMN stopped TEXT"],
    [
        "ALTER TABLE prunetune_candidates ADD COLUMN perplexity FLOAT",
        "ALTER TABLE prunetune_candidates ADD COLUMN memory FLOAT",
    ],
]
_TABLES = ("prunetune_meta", "prunetune_studies", "prunetune_candidates", "prunetune_pareto")
_DAMAGED = ("file is not a database", "malformed", "disk image", "file is encrypted")


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file's bytes; ``None`` when there is no such file."""
    p = Path(path)
    if not p.is_file():
        return None
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_error(exc: BaseException, display: str) -> StoreError:
    """The one-line error for a driver error ``exc`` on store ``display``."""
    orig = getattr(exc, "orig", None) or exc
    msg = first_line(orig)
    if any(m in msg for m in _DAMAGED):
        return StoreDamagedError(
            f"storage {display} is damaged ({msg}): restore it from a backup, or start the study again in a new file"
        )
    if "readonly database" in msg or "read-only transaction" in msg:
        return StoreError(
            f"storage {display} is read-only ({msg}): make the file and its folder writable, or use a copy"
        )
    return StoreError(f"cannot open storage {display}: {msg}")


def open_schema(engine: Engine, display: str, *, read_only: bool, checker: Engine | None = None) -> None:
    """Check, create or upgrade the schema of the store behind ``engine`` (see the module docs).

    ``checker``: a read-only engine on the same SQLite file, for the integrity
    check, so that a damaged file is refused before a writable connection
    touches it (switching a file to WAL writes its header).
    """
    try:
        if engine.dialect.name == "sqlite":
            _check_integrity(checker or engine, display)
        if read_only:
            _check_readable(engine, display)
        else:
            create_racing(lambda: _create_or_upgrade(engine, display))
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        raise store_error(exc, display) from None


def _check_integrity(engine: Engine, display: str) -> None:
    try:
        with engine.connect() as con:
            rows = [r[0] for r in con.exec_driver_sql("PRAGMA quick_check").fetchall()]
    except DatabaseError as exc:
        err = store_error(exc, display)
        if isinstance(err, StoreDamagedError):
            raise err from None
        raise
    if rows != ["ok"]:
        found = " ".join(r for r in rows if not r.startswith("***")).split()  # one line, without headers
        raise StoreDamagedError(
            f"storage {display} is damaged (integrity check: {' '.join(found)[:160]}): restore it from a backup, "
            "or start the study again in a new file"
        )


def _create_or_upgrade(engine: Engine, display: str) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        meta = s.get(MetaTable, "schema_version")
        if meta is None:
            s.add(MetaTable(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        # a real write (same value): a store that cannot be written fails here, before any work
        s.execute(update(MetaTable).where(MetaTable.key == "schema_version").values(value=meta.value))
        version = int(meta.value)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"storage {display} has schema version {version}, newer than this PruneTune's {SCHEMA_VERSION}: "
                "upgrade PruneTune"
            )
        for steps in _UPGRADES[version - 1 : SCHEMA_VERSION - 1]:
            for statement in steps:
                s.execute(text(statement))
        meta.value = str(SCHEMA_VERSION)


def _check_readable(engine: Engine, display: str) -> None:
    tables = set(inspect(engine).get_table_names())
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        raise StoreError(
            f"storage {display} holds no PruneTune study (no table {missing[0]}): "
            "check the URL, or run `prunetune run CONFIG.toml` to create a study"
        )
    with Session(engine) as s:
        meta = s.get(MetaTable, "schema_version")
        version = int(meta.value) if meta is not None else 0
    if version != SCHEMA_VERSION:
        what = "run `prunetune run` on it once to upgrade it" if version < SCHEMA_VERSION else "upgrade PruneTune"
        raise StoreError(
            f"storage {display} has schema version {version}, this PruneTune reads {SCHEMA_VERSION}: {what}"
        )
