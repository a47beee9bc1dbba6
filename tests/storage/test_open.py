"""Opening a store: read-only opens never write, schema upgrades in place, released candidates are claimed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import SCHEMA_VERSION, PhaseTimes, StoreDamagedError, StoreError, StudyStore, Submissions, file_sha256
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


# what each older schema lacked (SQL that takes a current store back to that version)
_DOWNGRADES = {
    7: [f"ALTER TABLE prunetune_candidates DROP COLUMN {column}" for column in ("perplexity", "memory")],
}
_DOWNGRADES[6] = [*_DOWNGRADES[7], "ALTER TABLE prunetune_studies DROP COLUMN stopped"]
_DOWNGRADES[5] = [*_DOWNGRADES[6], "DROP TABLE prunetune_study_profiles"]
_DOWNGRADES[4] = [
    *_DOWNGRADES[5],
    "ALTER TABLE prunetune_candidates DROP COLUMN device_latency",
    "DROP TABLE prunetune_profiles",
]
_DOWNGRADES[3] = [
    *_DOWNGRADES[4],
    "ALTER TABLE prunetune_candidates DROP COLUMN rung",
    "ALTER TABLE prunetune_candidates DROP COLUMN rungs",
    "ALTER TABLE prunetune_candidates DROP COLUMN final",
]
_DOWNGRADES[2] = [
    *_DOWNGRADES[3],
    "ALTER TABLE prunetune_candidates DROP COLUMN kind",
    "ALTER TABLE prunetune_candidates DROP COLUMN phases",
    "ALTER TABLE prunetune_candidates DROP COLUMN test_accuracy",
    "DROP TABLE prunetune_submissions",
]
_DOWNGRADES[1] = [*_DOWNGRADES[2], "ALTER TABLE prunetune_candidates DROP COLUMN weights_sha256"]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7])
def test_an_older_store_is_upgraded_in_place_by_a_writer_only(tmp_path: Path, version: int) -> None:
    db = tmp_path / "old.db"
    store = StudyStore(f"sqlite:///{db}")
    sid = _study(store, "old")
    cid = store.reserve(sid, "{}", "h-old")
    store._engine.dispose()
    with sqlite3.connect(db) as con:
        for statement in _DOWNGRADES[version]:
            con.execute(statement)
        con.execute(f"UPDATE prunetune_meta SET value = '{version}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"schema version {version}, this PruneTune reads 8: run `prunetune run`"):
        StudyStore.open_existing(f"sqlite:///{db}")
    upgraded = StudyStore(f"sqlite:///{db}")
    row = upgraded.candidate(sid, id=cid)
    assert (row.weights_sha256, row.kind, row.phases, row.test_accuracy) == (None, None, None, None)
    assert (row.rung, row.rungs, row.final, row.device_latency) == (None, None, None, None)
    assert SCHEMA_VERSION == 8 and upgraded.study("old").stopped is None
    assert (row.perplexity, row.memory) == (None, None)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    upgraded.finish(
        cid or 0,
        "COMPLETE",
        accuracy=0.5,
        cost={"macs": 1, "latency": 2.5},
        artifact=str(weights),
        phases={"eval": 1},
        rungs=[[5, 0.5]],
    )
    upgraded.record_test_accuracy(cid or 0, 0.4)
    Submissions(upgraded).submit("queued-after-upgrade", {})
    row = StudyStore.open_existing(f"sqlite:///{db}").candidate(sid, id=cid)
    assert (row.weights_sha256, row.phases, row.test_accuracy) == (file_sha256(weights), PhaseTimes(eval=1.0), 0.4)
    assert (row.rung, row.rungs) == (0, [[5, 0.5]])
    assert row.latency == 2.5 and upgraded.profile("k") is None  # the new column and table are there
    upgraded.save_study_profile(sid, "k", "{}", [[cid or 0, 2.0]])  # and the study profiles' table (6)
    assert StudyStore.open_existing(f"sqlite:///{db}").study_profile("old", "k") == "{}"
    lm = upgraded.reserve(sid, "{}", "h-lm")  # and the language models' columns (8)
    lm_cost = {"memory": 3e6, "bytes": 2e6}
    upgraded.finish(lm or 0, "COMPLETE", perplexity=6.5, cost=lm_cost, objectives=["perplexity", "memory"])
    row = StudyStore.open_existing(f"sqlite:///{db}").candidate(sid, id=lm)
    assert (row.perplexity, row.memory, row.bytes, row.accuracy) == (6.5, 3e6, 2e6, None)
    upgraded.set_stopped(sid, "stopped on time")  # and the studies' stopped column (7)
    assert StudyStore.open_existing(f"sqlite:///{db}").study("old").stopped == "stopped on time"


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
