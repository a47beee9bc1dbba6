"""The plug-in example (examples/plugins/prunetune-fp16), installed with pip, runs a study through its entry point.

pip installs the example package into a temporary folder (``--target``: the
test environment is left as it was); the ``prunetune`` CLI then runs in a
subprocess with that folder on its path, so the dimension is found the way a
user's installed plug-in is, through the entry point ``prunetune.dimensions``,
with no PruneTune file naming it. The study stores chosen layers in float16
under a bytes budget; an exported candidate rebuilds with the same bytes and
accuracy as the study recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main
from spaces.dimensions import DIMENSIONS
from storage import StudyStore
from tests.search.conftest import ConfigMaker

ROOT = Path(__file__).parents[2]
PLUGIN = ROOT / "examples" / "plugins" / "prunetune-fp16"
CHECK = """
import json, sys
from evaluators import Context, evaluate_accuracy, load_data
from search import load_exported
from spaces import measure_cost
from spaces.dimensions import DIMENSIONS
import torch
model = load_exported(sys.argv[1])
acc, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
cost = measure_cost(model, torch.zeros(1, 1, 8, 8))
halves = sum(p.dtype == torch.float16 for p in model.parameters())
print(json.dumps({"names": list(DIMENSIONS.names()), "accuracy": acc, "bytes": cost.bytes, "halves": halves}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in, installed by pip into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    done = subprocess.run([*pip, str(target), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "prunetune_fp16" / "__init__.py").is_file()
    return target


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_the_plugin_runs_a_study_through_its_entry_point(site: Path, make_config: ConfigMaker, tmp_path: Path) -> None:
    cfg = make_config(budget__macs=None, budget__bytes="60%", search__candidates=8)
    done = _run(site, "-m", "search.cli", "run", str(cfg), "--quiet", "--space.fp16.max_share", "1.0")  # on
    assert done.returncode == 0, done.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore(url)
    info = store.study("t")
    rows = store.candidates(info.id, status="COMPLETE")
    with_fp16 = [r for r in rows if "fp16" in json.loads(r.plan)]
    assert len(rows) == 8 and with_fp16, [r.plan for r in rows]
    cap = 0.6 * info.base_cost["bytes"]
    assert all(r.bytes <= cap for r in rows)
    best = max(with_fp16, key=lambda r: r.accuracy)
    out = tmp_path / "export"
    done = _run(site, "-m", "search.cli", "export", str(cfg), "--trial", str(best.trial_number), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fp16" in json.loads((out / "model.json").read_text())["compression"]
    done = _run(site, "-c", CHECK, str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["names"] == [*DIMENSIONS.builtins, "fp16"]  # the built-ins (prune, rank, bits, depth), then the plug-in
    assert (got["bytes"], got["accuracy"]) == (best.bytes, best.accuracy) and got["halves"] == len(
        json.loads(best.plan)["fp16"]
    )


def test_a_misspelled_key_in_a_plugin_table_is_one_line(site: Path, make_config: ConfigMaker) -> None:
    cfg = make_config()
    cfg.write_text(cfg.read_text() + "\n[space.fp16]\nmax_shar = 1.0\n")
    done = _run(site, "-m", "search.cli", "run", str(cfg), "--quiet")
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "unknown config key 'space.fp16.max_shar'; did you mean 'max_share'? valid keys here: keep_first_last, "
        "max_share"
    ), done.stderr
    if "fp16" not in DIMENSIONS.names():  # this environment has not installed the plug-in itself
        assert main(["run", str(cfg), "--quiet"]) == 2  # without it, [space.fp16] is an unknown table
