"""Interrupts that are never lost: SIGINT and SIGTERM at many instants of a real `prunetune run`.

Each case starts the CLI in its own process, waits for an observable instant
(the process started, the store exists, the baseline is training, a candidate
is fine-tuning, candidates are done), sends the signal and checks the exit
code, the last line of stderr, and that no candidate is left RUNNING with a
worker. A final rerun must finish the study.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.search.conftest import ConfigMaker

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = 3


def _start(cfg: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet", "--evaluate.threads", "1"]
    _started.append(time.monotonic())
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _count(db: Path, where: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute(f"SELECT count(*) FROM prunetune_candidates WHERE {where}").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _wait(proc: subprocess.Popen[str], ready: Callable[[], bool], deadline_s: float = 300.0) -> None:
    """Poll ``ready`` until it holds (generous deadline: a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the instant never came"
        time.sleep(0.05)


def _running_with_worker(db: Path) -> int:
    return _count(db, "status = 'RUNNING' AND worker IS NOT NULL")


def _after(seconds: float) -> bool:
    """True once ``seconds`` have passed since the last process was started.

    Before the CLI's ``main`` runs (the interpreter's start-up and the light
    imports of ``search.cli``, about 0.1 s) Python's own Ctrl-C applies; a second
    later the command is importing torch and preparing the study.
    """
    return time.monotonic() - _started[-1] >= seconds


_started: list[float] = [0.0]


# (name, signal, the instant to wait for) — the instant gets the study's database path
INSTANTS: list[tuple[str, signal.Signals, Callable[[Path], bool]]] = [
    ("store created", signal.SIGINT, lambda db: db.exists()),  # the first run creates it
    ("importing torch", signal.SIGINT, lambda db: _after(1.0)),
    ("first fine-tune", signal.SIGINT, lambda db: _count(db, "status = 'RUNNING'") > 0),
    ("one done", signal.SIGINT, lambda db: _count(db, "status = 'COMPLETE'") >= 1),
    ("fine-tune, SIGTERM", signal.SIGTERM, lambda db: _count(db, "status = 'RUNNING'") > 0),
]


@pytest.fixture
def study(make_config: ConfigMaker, tmp_path: Path) -> tuple[Path, Path]:
    cfg = make_config(search__candidates=CANDIDATES, evaluate__finetune_steps=200, evaluate__eval_every=50)
    return cfg, tmp_path / "study.db"


def test_every_instant_stops_cleanly_and_a_rerun_finishes(study: tuple[Path, Path]) -> None:
    cfg, db = study
    for name, sig, instant in INSTANTS:
        if _count(db, "status = 'COMPLETE'") >= CANDIDATES:
            break
        proc = _start(cfg)
        _wait(proc, lambda instant=instant: _after(0.5) and instant(db))  # type: ignore[misc]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # the study finished before the signal: nothing was interrupted
            continue
        assert proc.returncode == 128 + sig, (name, err)
        last = err.strip().splitlines()[-1]
        expected = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
        assert last == f"prunetune: {expected}; rerun the same command to resume", name
        assert _running_with_worker(db) == 0, name  # released: the next run evaluates it at once
    final = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert final.returncode == 0, final.stderr
    assert _count(db, "status = 'COMPLETE'") == CANDIDATES
    assert _count(db, "status = 'RUNNING'") == 0


def test_a_second_signal_exits_at_once_and_the_stale_claim_path_recovers(study: tuple[Path, Path]) -> None:
    cfg, db = study
    proc = _start(cfg)
    _wait(proc, lambda: _count(db, "status = 'RUNNING'") > 0)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    if "second signal" in err:  # the first had not reached a safe point yet: the candidate keeps its worker
        assert _running_with_worker(db) == 1
    final = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert final.returncode == 0, final.stderr
    assert _count(db, "status = 'COMPLETE'") + _count(db, "status = 'FAIL'") == CANDIDATES
    assert _count(db, "status = 'RUNNING'") == 0


def test_the_flag_is_a_safe_point_exception_not_a_lost_keyboard_interrupt() -> None:
    import os

    from spaces import Interrupted, check_interrupt, handle_signals, interrupt_requested

    with handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes: it only records the signal
        assert interrupt_requested() == signal.SIGTERM
        with pytest.raises(Interrupted) as info:
            check_interrupt()
        assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)
    assert interrupt_requested() is None  # cleared: the next command starts afresh
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
