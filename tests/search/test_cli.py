from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from search.cli import main
from spaces import Plan


def test_inspect_prints_groups_and_costs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--model", "zoo:resnet20", "--input", "1,3,32,32", "--ratios", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "12 prunable groups" in out
    assert "layer3.0.conv1" in out
    assert "uniform 0.5" in out
    # resnet20 at 32x32: stem 442,368 + stage1 14,155,776 + stages 2 and 3 13,107,200 each + fc 640
    assert "40.81M" in out
    assert "never pruned (classifier / ignored): fc" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--model", "zoo:nope", "--input", "1,3,32,32"], "unknown zoo model 'nope'"),
        (["inspect", "--model", "zoo:resnet20", "--input", "1,1,32,32"], "do not fit the model"),
        (["inspect", "--model", "builtins:dict"], "must return a torch.nn.Module"),
        (["inspect", "--model", "zoo:resnet20", "--weights", "/nonexistent.safetensors"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunetune: error: ") and message in err
    assert "\n" not in err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, check=False)


def test_argparse_errors_exit_2() -> None:
    proc = _cli("inspect", "--model", "zoo:resnet20", "--ratios", "1.0")
    assert proc.returncode == 2
    assert "--ratios must be in [0, 1), got 1.0" in proc.stderr


def test_inspect_shows_ranks_and_the_allocators_plan(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inspect", "--model", "zoo:resnet20", "--input", "1,3,32,32", "--budget", "macs=40%,params=50%"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "22 factorizable layers" in out
    assert "64x64x3x3" in out and " 57 " in out  # full rank 64, break-even 57 for a 64x64 3x3 conv
    assert "allocator plan for" in out and "(milp" in out
    plan_line = next(line for line in out.splitlines() if line.startswith("plan: "))
    plan = Plan.from_json(plan_line.removeprefix("plan: "))
    assert plan.prune or plan.rank


def test_bad_budget_flag_exits_2() -> None:
    proc = _cli("inspect", "--model", "zoo:resnet20", "--budget", "macs=40")
    assert proc.returncode == 2
    assert "no unit" in proc.stderr


def test_a_bare_type_error_is_a_bug_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import _commands

    def broken(args: object) -> int:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(_commands, "cmd_status", broken)
    assert main(["status", "--storage", "sqlite:///unused.db"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError: unsupported operand" in err
    assert err.strip().splitlines()[-1].startswith("prunetune: internal error (a bug, not your input)")


def test_a_missing_study_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "none.db"
    assert main(["front", "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"prunetune: error: no study database at {str(db)!r}: run `prunetune run CONFIG.toml` first or pass --storage"
    )
    assert not db.exists()


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys\nfrom search.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'pandas') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_pickled_weights_file_is_one_line_even_with_warnings_as_errors(tmp_path: Path) -> None:
    """torch.load's "Detected pickle protocol" UserWarning never reaches the user before our one line."""
    import pickle

    weights = tmp_path / "w.pt"
    weights.write_bytes(pickle.dumps({"conv1.weight": [1.0, 2.0]}, protocol=4))
    cmd = [sys.executable, "-W", "error::UserWarning", "-m", "search.cli", "inspect", "--model", "zoo:resnet20"]
    proc = subprocess.run([*cmd, "--weights", str(weights), "--input", "1,3,32,32"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: ") and "never unpickles code" in lines[0]


def test_profile_takes_the_same_overrides_as_run(
    make_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--section.key`` overrides reach the profile: the threads it is measured with, and a bad value's error."""
    cfg = make_config(evaluate__threads=2)
    assert main(["profile", str(cfg), "--runs", "1", "--evaluate.threads", "1"]) == 0
    assert "torch, 1 threads," in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert main(["profile", str(cfg), "--evaluate.runtime", "tvm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "evaluate.runtime" in err and "\n" not in err
