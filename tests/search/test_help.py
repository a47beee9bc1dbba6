"""A newcomer's first commands: every ``--help`` answers without torch, and the front fits the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search._config import config_flags
from storage import StudyStore

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("inspect", "run", "front", "status", "export", "finalize", "report", "serve", "worker")

# Runs every command's --help in one fresh interpreter; prints one JSON object: outputs, exit codes, heavy modules.
_HELP_ALL = """
import contextlib, io, json, sys
from search.cli import main
out = {}
for argv in [["--help"]] + [[c, "--help"] for c in sys.argv[1:]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out[" ".join(argv)] = [code, buf.getvalue()]
heavy = sorted(m for m in ("torch", "numpy", "optuna", "sqlalchemy", "pandas") if m in sys.modules)
print(json.dumps({"help": out, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, object]:
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, *COMMANDS], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def test_every_help_exits_0_without_torch(helps: dict[str, object]) -> None:
    outputs = helps["help"]
    assert isinstance(outputs, dict)
    assert sorted(outputs) == sorted(["--help", *(f"{c} --help" for c in COMMANDS)])
    for argv, (code, text) in outputs.items():
        assert code == 0, argv
        assert text.startswith("usage: prunetune"), argv
    assert helps["heavy"] == []


@pytest.mark.parametrize("command", ["run", "finalize"])
def test_run_and_finalize_help_name_every_config_key(helps: dict[str, object], command: str) -> None:
    outputs = helps["help"]
    assert isinstance(outputs, dict)
    text = outputs[f"{command} --help"][1]
    missing = [key for key, _, _ in config_flags() if f"--{key}" not in text]
    assert not missing
    assert 'limit ("10%")' in text  # a description with a percent sign reaches the reader as written


def _store_with_front(db: Path, members: int) -> str:
    url = f"sqlite:///{db}"
    store = StudyStore(url)
    sid = store.ensure_study(
        "wide",
        model_spec="zoo:resnet20",
        data_spec="digits",
        budget={"macs": "50%"},
        space_options={"importance": "l1"},
        base_cost={"macs": 1000, "params": 100, "bytes": 400},
        base_accuracy=0.98,
    )
    for i in range(members):
        plan = {"prune": {f"layer{j}.{b}.conv{k}": 0.05 + 0.1 * ((i + j + k) % 9) for j in (1, 2, 3) for b in (0, 1, 2)
                          for k in (1, 2)}, "rank": {"layer1.0.conv1": 5 + i}}  # fmt: skip
        cid = store.reserve(sid, json.dumps(plan, sort_keys=True), f"hash-{i}", trial_number=i)
        assert cid is not None
        cost = {"macs": 500 - 40 * i, "params": 50 - 4 * i, "bytes": 200 - 16 * i}
        store.finish(cid, "COMPLETE", accuracy=0.95 - 0.01 * i, cost=cost, seconds=1.0)
    return url


def test_front_is_one_line_per_member_in_80_columns(tmp_path: Path) -> None:
    url = _store_with_front(tmp_path / "wide.db", members=7)
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "search.cli", "front", "--storage", url, "--plans"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 7  # one line each: nothing wraps
    assert all(len(line) <= 80 for line in lines if not line.startswith("trial "))
    assert all(row.rstrip("│ ").endswith("…") for row in rows)  # the plan summary is cut, not wrapped
    header = next(line for line in lines if line.startswith("┃"))
    assert "test acc" not in header and "latency" not in header and "rung" not in header  # no value: dropped
    assert "val acc" in header and "MACs %" in header
    plans = [line for line in lines if line.startswith("trial ")]
    assert len(plans) == 7 and all('"layer3.2.conv2"' in p for p in plans)  # --plans: the whole plan
