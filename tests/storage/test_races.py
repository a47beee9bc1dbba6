"""Workers that start together on a fresh database: every one opens it, none sees another's half-made tables."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import StudyStore

# Each worker imports everything first, then waits for the same instant and opens (creates) the store and
# Optuna's storage on a fresh SQLite file, several files in a row, so the creations really overlap.
_WORKER = """
import sys, time
import optuna.storages  # noqa: F401  (imported before the start: only the creation races)
from storage import StudyStore
start, paths = float(sys.argv[1]), sys.argv[2:]
for i, path in enumerate(paths):
    time.sleep(max(0.0, start + 2.0 * i - time.time()))
    store = StudyStore(f"sqlite:///{path}")
    store.optuna_storage()
    sid = store.ensure_study("race", model_spec="m", data_spec="d", budget={"macs": "50%"}, space_options={},
                             base_cost={"macs": 1})
    print(sid, flush=True)
"""


def test_four_workers_create_a_fresh_sqlite_store_and_optunas_tables_at_once(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"fresh-{i}.db") for i in range(3)]
    start = time.time() + 6.0  # after the workers' imports (optuna: ~2 s on a busy 2-core machine)
    root = Path(__file__).parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(start), *paths],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert all(out.split() == ["1", "1", "1"] for out, _ in outs)  # one study per file, the same for all
    for path in paths:
        store = StudyStore(f"sqlite:///{path}")
        assert store.study_names() == ["race"]
        assert [s.study_name for s in store.optuna_storage().get_all_studies()] == []


def test_open_existing_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    from storage import StoreError

    db = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no study database at") as e:
        StudyStore.open_existing(f"sqlite:///{db}")
    assert "\n" not in str(e.value) and not db.exists()
    StudyStore(f"sqlite:///{db}")
    assert StudyStore.open_existing(f"sqlite:///{db}").study_names() == []
