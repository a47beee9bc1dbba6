"""optuna-dashboard reads our store: the README's read-only SQLite URL, a real study, its Pareto trials."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from storage import StudyStore
from tests.search.conftest import dump
from tests.search.servers import free_port, stop


def test_optuna_dashboard_lists_the_study_with_its_pareto_trials(existing: Path, tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    with sqlite3.connect(f"file:{existing.parent / 'study.db'}?mode=ro", uri=True) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    before = dump(db)
    store = StudyStore.open_existing(f"sqlite:///{db}")
    info = store.study("t")
    front = sorted(r.trial_number for r in store.front(info.id) if r.trial_number is not None)
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    port = free_port()
    url = f"sqlite:///file:{db}?mode=ro&uri=true"  # as the README shows it: nothing can be written
    proc = subprocess.Popen(
        [exe, url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                studies = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=10).json()["study_summaries"]
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 90 s"
                time.sleep(0.5)
        [summary] = [s for s in studies if s["study_name"] == "t"]
        assert summary["directions"] == ["maximize", "minimize"]
        detail = httpx.get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0", timeout=30).json()
        assert detail["objective_names"] == ["accuracy", "macs"]  # set by our study (set_metric_names)
        assert len(detail["trials"]) == 2
        assert sorted(t["number"] for t in detail["best_trials"]) == front  # its Pareto front is ours
    finally:
        stop(proc)
    assert dump(db) == before
