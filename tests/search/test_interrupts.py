"""Interrupts that are never lost: SIGINT and SIGTERM at many instants of a real `prunetune run`, and in every
command that has no safe points (`inspect`, `profile`, `export --int8`, `report`).

Each case starts the CLI in its own process, waits for an observable instant
(the process started, the store exists, the baseline is training, a candidate
is fine-tuning, candidates are done; a command's first output or its staging
folder), sends the signal and checks the exit code (130 / 143 wherever the
work has begun), how soon the process ended (within 2 s while a study prepares
and in the commands), the last line of stderr, that what was printed before
the signal is there, and that nothing is left half-written: no candidate
RUNNING with a worker, no partial export or report. A final rerun must finish
the study.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


STOP_S = 2.0  # the first signal ends a preparing study, or a command without safe points, within this


class _Instant:
    """When to signal a run: ``ready(db)`` holds (and at least 0.5 s have passed since the process started).

    ``fresh``: the baseline is trained; ``prepares``: the study is being prepared (the process must be gone
    within :data:`STOP_S`); ``may_finish``: the run may have ended before the signal came (exit 0 allowed).
    """

    def __init__(
        self,
        name: str,
        sig: signal.Signals,
        ready: Callable[[Path], bool],
        *,
        fresh: bool = False,
        prepares: bool = False,
        may_finish: bool = False,
    ) -> None:
        self.name, self.sig, self.ready = name, sig, ready
        self.fresh, self.prepares, self.may_finish = fresh, prepares, may_finish


def _done(n: int) -> Callable[[Path], bool]:
    return lambda db: _count(db, "status = 'COMPLETE'") >= n


def _running_after(seconds: float) -> Callable[[Path], bool]:
    """A candidate of this run is being evaluated (one an earlier run released has no worker)."""
    return lambda db: _count(db, "status = 'RUNNING' AND worker IS NOT NULL") > 0 and _after(seconds)


def _started_after(seconds: float) -> Callable[[Path], bool]:
    return lambda db: _after(seconds)


# Twenty instants of a run's life: importing and preparing, the baseline training (a baseline that is
# not cached: its seed is new), store writes, fine-tune steps, between candidates, after the last one.
INSTANTS: list[_Instant] = [
    _Instant("store created, first run", signal.SIGINT, lambda db: db.exists(), prepares=True),
    *(_Instant(f"start + {t} s", signal.SIGINT, _started_after(t), prepares=True) for t in (0.6, 1.0, 1.5, 2.5)),
    *(
        _Instant(f"baseline training, start + {t} s", signal.SIGINT, _started_after(t), fresh=True, prepares=True)
        for t in (3.0, 4.5)
    ),
    _Instant("baseline training, SIGTERM", signal.SIGTERM, _started_after(4.0), fresh=True, prepares=True),
    _Instant("a candidate reserved", signal.SIGINT, _running_after(0.0)),
    *(_Instant(f"fine-tune, +{t} s", signal.SIGINT, _running_after(t)) for t in (0.3, 0.8)),
    _Instant("fine-tune, SIGTERM", signal.SIGTERM, _running_after(0.5)),
    *(_Instant(f"{n} done", signal.SIGINT, _done(n)) for n in (1, 2, 3, 4)),
    _Instant("between candidates, SIGTERM", signal.SIGTERM, _done(5)),
    *(_Instant(f"{n} done", signal.SIGINT, _done(n)) for n in (6, 7)),
    _Instant("after the last candidate", signal.SIGINT, _done(CANDIDATES), may_finish=True),
]


@pytest.fixture
def study(make_config: ConfigMaker, tmp_path: Path) -> tuple[Path, Path]:
    cfg = make_config(search__candidates=CANDIDATES, evaluate__finetune_steps=60, evaluate__eval_every=20)
    return cfg, tmp_path / "study.db"


def _stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, float]:
    """Send ``sig``; stderr, and the seconds until the process was gone."""
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return err, time.monotonic() - sent


def _main_started(pid: int) -> bool:
    """Whether the CLI's ``main`` installed its handlers: SIGTERM is caught (Python alone leaves it to the system).

    Before that, Python's own Ctrl-C applies (the interpreter's start-up and the light imports of
    ``search.cli``: about 0.1 s, seconds on a loaded machine).
    """
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # not Linux: the 0.5 s below must do
        return True
    caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def _signal_at(cfg: Path, db: Path, instant: _Instant) -> None:
    """Run the study, signal it at ``instant``, and check the exit, how soon it came, and the store."""
    proc = _start(cfg)
    _wait(proc, lambda: _main_started(proc.pid))
    _wait(proc, lambda: _after(0.5) and instant.ready(db))
    err, seconds = _stop(proc, instant.sig)
    if proc.returncode == 0:  # only once every candidate is done: the run had nothing left to stop
        assert instant.may_finish and _count(db, "status = 'COMPLETE'") == CANDIDATES, (instant.name, err)
        return
    assert proc.returncode == 128 + instant.sig, (instant.name, err)
    if instant.prepares:
        assert seconds <= STOP_S, (instant.name, seconds)
    last = err.strip().splitlines()[-1]
    expected = "interrupted" if instant.sig == signal.SIGINT else f"stopped by {instant.sig.name}"
    assert last == f"prunetune: {expected}; rerun the same command to resume", instant.name
    assert "Traceback" not in err, instant.name
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


class _Live:
    """A CLI process whose stdout and stderr are read while it runs (instants marked by its output)."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "search.cli", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        lines.extend(stream)

    def wait_for(self, ready: Callable[[], bool], deadline_s: float = 300.0) -> None:
        deadline = time.monotonic() + deadline_s
        while not ready():
            assert self.proc.poll() is None, (self.proc.returncode, "".join(self.err))
            assert time.monotonic() < deadline, "the instant never came"
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> float:
        """Send ``sig``; the seconds until the process was gone (its output read to the end)."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        for r in self._readers:
            r.join(timeout=10)
        return seconds


def _complete_trial(cfg: Path) -> int:
    with sqlite3.connect(f"file:{cfg.parent / 'study.db'}?mode=ro", uri=True) as con:
        row = con.execute("SELECT min(trial_number) FROM prunetune_candidates WHERE status = 'COMPLETE'").fetchone()
    return int(row[0])


def _command(name: str, cfg: Path, out: Path) -> tuple[list[str], Callable[[_Live], bool]]:
    """The command line, and its mid-work instant: a first table printed, a status line, a staging folder."""
    if name == "inspect":  # the groups, costs and layers are printed; the allocator is choosing its plan
        args = ["inspect", "--model", "torchvision:resnet50", "--input", "1,3,64,64", "--budget", "macs=40%,params=50%"]
        return args, lambda live: any("factorizable layers" in line for line in live.out)
    if name == "profile":  # the layer tables are being timed (in a store of its own: the study's stays as it was)
        args = ["profile", str(cfg), "--storage.url", f"sqlite:///{out / 'profiles.db'}"]
        return args, lambda live: any("device profile of" in line for line in live.err)
    if name == "export":  # the export is written; the ONNX model, its int8 twin and their checks are being made
        args = ["export", str(cfg), "--trial", str(_complete_trial(cfg)), "--out", str(out)]
        return [*args, "--format", "onnx", "--int8"], lambda live: any("load it with" in line for line in live.out)
    args = ["report", str(cfg), "--out", str(out)]  # the report is being made in its staging folder
    return args, lambda live: any(out.glob(".prunetune-partial-*"))


@pytest.mark.parametrize("name", ["inspect", "profile", "export", "report"])
def test_ctrl_c_stops_a_command_within_two_seconds_with_its_output(existing: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    if name == "profile":
        out.mkdir()
    args, ready = _command(name, existing, out)
    live = _Live(*args)
    live.wait_for(lambda: ready(live))
    seconds = live.stop(signal.SIGINT)
    err = "".join(live.err)
    assert live.proc.returncode == 130, err
    assert seconds <= STOP_S, seconds
    assert err.strip().splitlines()[-1] == "prunetune: interrupted" and "Traceback" not in err
    printed = "".join(live.out)
    if name == "inspect":  # what was printed before the signal was flushed
        assert "37 prunable groups" in printed and "factorizable layers" in printed and "plan: " not in printed
    if name == "export":  # the export is whole; no ONNX file, no staging folder: nothing half-written
        assert f"exported trial {_complete_trial(existing)}" in printed
        assert sorted(p.name for p in out.iterdir()) == ["model.json", "plan.json", "weights.safetensors"]
        assert "onnx" not in json.loads((out / "model.json").read_text())
    if name == "profile":  # nothing measured is stored
        with sqlite3.connect(f"file:{out / 'profiles.db'}?mode=ro", uri=True) as con:
            assert con.execute("SELECT count(*) FROM prunetune_profiles").fetchone()[0] == 0
    if name == "report":  # no report at all rather than part of one
        assert list(out.iterdir()) == []


def test_an_error_raised_after_the_signal_ends_as_the_interrupt_it_follows() -> None:
    """A library that swallowed the interrupt and then failed (numpy's half-imported core) still exits 130."""
    import argparse
    import os

    from search.cli._main import _run
    from spaces import Interrupted, handle_signals

    def command(_: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:  # swallowed, as an extension module's initialization may do
            pass
        raise ImportError("cannot load module more than once per process")

    def failing(_: argparse.Namespace) -> int:
        raise ImportError("a real error: no signal came")

    with handle_signals(), pytest.raises(Interrupted) as stopped:
        _run(argparse.Namespace(func=command))
    assert stopped.value.exit_code == 130 and isinstance(stopped.value.__cause__, ImportError)
    with handle_signals(), pytest.raises(ImportError, match="no signal came"):
        _run(argparse.Namespace(func=failing))
