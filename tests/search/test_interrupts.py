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
CANDIDATES = 8


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


class _Instant:
    """When to signal a run: ``ready(db)`` holds (and at least 0.5 s have passed since the process started)."""

    def __init__(self, name: str, sig: signal.Signals, ready: Callable[[Path], bool], fresh: bool = False) -> None:
        self.name, self.sig, self.ready, self.fresh = name, sig, ready, fresh  # fresh: the baseline is trained


def _done(n: int) -> Callable[[Path], bool]:
    return lambda db: _count(db, "status = 'COMPLETE'") >= n


def _running_after(seconds: float) -> Callable[[Path], bool]:
    return lambda db: _count(db, "status = 'RUNNING'") > 0 and _after(seconds)


def _started_after(seconds: float) -> Callable[[Path], bool]:
    return lambda db: _after(seconds)


# Twenty instants of a run's life: importing and preparing, the baseline training (a baseline that is
# not cached: its seed is new), store writes, fine-tune steps, between candidates, after the last one.
INSTANTS: list[_Instant] = [
    _Instant("store created, first run", signal.SIGINT, lambda db: db.exists()),
    *(_Instant(f"start + {t} s", signal.SIGINT, _started_after(t)) for t in (0.6, 1.0, 1.5, 2.5)),
    *(_Instant(f"baseline training, start + {t} s", signal.SIGINT, _started_after(t), True) for t in (3.0, 4.5)),
    _Instant("baseline training, SIGTERM", signal.SIGTERM, _started_after(4.0), True),
    _Instant("a candidate reserved", signal.SIGINT, _running_after(0.0)),
    *(_Instant(f"fine-tune, +{t} s", signal.SIGINT, _running_after(t)) for t in (0.3, 0.8)),
    _Instant("fine-tune, SIGTERM", signal.SIGTERM, _running_after(0.5)),
    *(_Instant(f"{n} done", signal.SIGINT, _done(n)) for n in (1, 2, 3, 4)),
    _Instant("between candidates, SIGTERM", signal.SIGTERM, _done(5)),
    *(_Instant(f"{n} done", signal.SIGINT, _done(n)) for n in (6, 7)),
    _Instant("after the last candidate", signal.SIGINT, _done(CANDIDATES)),
]


@pytest.fixture
def study(make_config: ConfigMaker, tmp_path: Path) -> tuple[Path, Path]:
    cfg = make_config(search__candidates=CANDIDATES, evaluate__finetune_steps=60, evaluate__eval_every=20)
    return cfg, tmp_path / "study.db"


def _signal_at(cfg: Path, db: Path, instant: _Instant) -> None:
    """Run the study, signal it at ``instant``, and check the exit and the store."""
    proc = _start(cfg)
    _wait(proc, lambda: _after(0.5) and instant.ready(db))
    proc.send_signal(instant.sig)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:  # the study finished before the signal reached a safe point: nothing to stop
        return
    assert proc.returncode == 128 + instant.sig, (instant.name, err)
    last = err.strip().splitlines()[-1]
    expected = "interrupted" if instant.sig == signal.SIGINT else f"stopped by {instant.sig.name}"
    assert last == f"prunetune: {expected}; rerun the same command to resume", instant.name
    assert _running_with_worker(db) == 0, instant.name  # released: the next run evaluates it at once


def _finish(cfg: Path, db: Path) -> None:
    final = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert final.returncode == 0, final.stderr
    assert _count(db, "status = 'COMPLETE'") == CANDIDATES
    assert _count(db, "status = 'RUNNING'") == 0


def test_twenty_instants_stop_cleanly_and_a_rerun_finishes(study: tuple[Path, Path], make_config: ConfigMaker) -> None:
    cfg, db = study
    fresh_db = db.with_name("fresh.db")
    fresh = make_config(
        "fresh",
        model__train_seed=7,  # a baseline that is not cached: the run trains it
        model__train_epochs=40,
        search__candidates=CANDIDATES,
        storage__url=f"sqlite:///{fresh_db}",
    )
    assert len(INSTANTS) == 20
    for instant in INSTANTS:
        _signal_at(fresh if instant.fresh else cfg, fresh_db if instant.fresh else db, instant)
    _finish(cfg, db)
    _finish(fresh, fresh_db)


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
