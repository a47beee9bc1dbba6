"""Every benchmark and script runs at its smoke size, so none rots unseen.

Each ``bench/*.py`` and ``scripts/*.py`` (found by glob: a new one without ``--smoke`` fails here) runs as
``python FILE --smoke`` in a child process, in a temp dir as its working directory, and must exit 0 and print
a Markdown table (a line starting with ``|``), as the README's tables are made. CI runs them with the rest of
the suite; ``-m "not smoke"`` leaves them out of a quick local run. The two benchmarks of many workers
(``bench_ray.py``, ``bench_scale.py``) need the PostgreSQL server CI starts (``scripts/postgres.sh``), and
``bench_ray.py`` Ray too: without them they are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FILES = sorted(p for d in ("bench", "scripts") for p in (ROOT / d).glob("*.py") if not p.name.startswith("_"))
NEEDS_POSTGRES = {"bench_ray.py", "bench_scale.py"}
NEEDS_RAY = {"bench_ray.py"}
TIMEOUT_S = 600  # a smoke run takes seconds on an idle machine; this only stops one that hangs

pytestmark = pytest.mark.smoke


def _missing(name: str) -> str | None:
    """What this machine lacks to smoke-run ``name`` (``None``: nothing)."""
    if name in NEEDS_POSTGRES and not os.environ.get("PRUNETUNE_TEST_POSTGRES_URL"):
        return 'no PostgreSQL server: eval "$(bash scripts/postgres.sh start)"'
    if name in NEEDS_RAY and importlib.util.find_spec("ray") is None:
        return "ray is not installed: pip install 'prunetune[ray]'"
    return None


def _run(path: Path, cwd: Path) -> tuple[int, str, str, float]:
    """``python path --smoke`` in ``cwd``, its whole process group killed when it outlives the timeout."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(path), "--smoke"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {TIMEOUT_S} s)"
    return proc.returncode, out, err, time.perf_counter() - t


def test_every_bench_and_script_is_found() -> None:
    names = {p.name for p in FILES}
    assert {"bench_search.py", "bench_ray.py", "support_matrix.py"} <= names, names
    assert "_shared.py" not in names


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_smoke_run_exits_0_and_prints_a_table(path: Path, tmp_path: Path) -> None:
    if reason := _missing(path.name):
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide what {path.name} needs: {reason}")
        pytest.skip(reason)
    code, out, err, secs = _run(path, tmp_path)
    tail = f"\n--- stdout (end) ---\n{out[-3000:]}\n--- stderr (end) ---\n{err[-3000:]}"
    assert code == 0, f"{path.name} --smoke exited {code} after {secs:.0f} s{tail}"
    assert any(line.startswith("|") for line in out.splitlines()), f"{path.name} --smoke printed no table{tail}"
