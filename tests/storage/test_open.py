"""Opening a store: read-only opens never write, schema upgrades in place, released candidates are claimed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import SCHEMA_VERSION, StoreDamagedError, StoreError, StudyStore, file_sha256
from tests.storage.test_store import _study, url  # noqa: F401  (the SQLite + PostgreSQL fixture)


def test_a_read_only_store_reads_and_refuses_every_write(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    sid = _study(store)
    cid = store.reserve(sid, "{}", "h-ro", worker="host:1")
    ro = StudyStore.open_existing(url)
    assert ro.read_only and sid in {ro.study(n).id for n in ro.study_names()}
    assert [r.id for r in ro.candidates(sid)] == [cid]
    for write in (lambda: ro.reserve(sid, "{}", "h-other"), lambda: ro.heartbeat(cid or 0), ro.optuna_storage):
        with pytest.raises(StoreError, match="read-only") as e:
            write()
        assert "\n" not in str(e.value)


def test_released_candidates_are_claimed_by_the_next_worker(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    sid = _study(store)
    mine = store.reserve(sid, "{}", "h-a", worker="host:1")
    other = store.reserve(sid, "{}", "h-b", worker="host:2")
    assert store.release(sid, "host:1", "interrupted by the user") == 1
    row = store.candidate(sid, id=mine)
    assert row.worker is None and row.error == "interrupted by the user: the next run evaluates it again"
    claimed = store.claim_stale(sid, "host:3", grace_seconds=3600, is_dead=lambda owner: owner is None)
    assert [r.id for r in claimed] == [mine] and claimed[0].attempts == 2
    assert store.candidate(sid, id=other).worker == "host:2"


def test_a_version_1_store_is_upgraded_in_place_by_a_writer_only(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    store = StudyStore(f"sqlite:///{db}")
    sid = _study(store, "old")
    cid = store.reserve(sid, "{}", "h-old")
    store._engine.dispose()
    with sqlite3.connect(db) as con:  # what version 1 looked like: no weights_sha256
        con.execute("ALTER TABLE prunetune_candidates DROP COLUMN weights_sha256")
        con.execute("UPDATE prunetune_meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 1, this PruneTune reads 2: run `prunetune run` on it once"):
        StudyStore.open_existing(f"sqlite:///{db}")
    upgraded = StudyStore(f"sqlite:///{db}")
    assert upgraded.candidate(sid, id=cid).weights_sha256 is None and SCHEMA_VERSION == 2
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    upgraded.finish(cid or 0, "COMPLETE", accuracy=0.5, cost={"macs": 1}, artifact=str(weights))
    assert StudyStore.open_existing(f"sqlite:///{db}").candidate(sid, id=cid).weights_sha256 == file_sha256(weights)


@pytest.mark.parametrize("how", ["random", "tail", "truncated"])
def test_a_damaged_file_is_refused_by_readers_and_writers_without_a_write(tmp_path: Path, how: str) -> None:
    import os

    db = tmp_path / "d.db"
    store = StudyStore(f"sqlite:///{db}")
    sid = _study(store, "d")
    for i in range(300):
        store.reserve(sid, "{}" * 40, f"h{i}")
    store._engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    with db.open("r+b") as f:
        if how == "random":
            f.write(os.urandom(size))
        elif how == "tail":
            f.seek(size - 4096)
            f.write(os.urandom(4096))
        else:
            f.truncate(size // 2)
    data = db.read_bytes()
    for open_it in (lambda: StudyStore(f"sqlite:///{db}"), lambda: StudyStore.open_existing(f"sqlite:///{db}")):
        with pytest.raises(StoreDamagedError, match="is damaged .*restore it from a backup") as e:
            open_it()
        assert "\n" not in str(e.value)
    assert db.read_bytes() == data


@pytest.mark.parametrize("bad", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_store_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="in-memory database: the study would be lost"):
        StudyStore(bad)
