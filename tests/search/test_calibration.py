"""Data-aware channel importance in a study: computed once on calibration batches, cached, reused everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import Context, evaluate_accuracy, load_data
from search import load_config, load_exported
from search.cli import main
from search.drivers._prepare import prepare
from spaces import ModelSpace, Plan
from storage import StudyStore
from tests.search.conftest import ConfigMaker


def test_taylor_scores_are_computed_once_and_a_second_study_reads_them(
    make_config: ConfigMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(space__importance="taylor", space__calibration_samples=32, search__candidates=3)
    assert main(["run", str(cfg), "--quiet"]) == 0  # a whole study on the data-aware criterion
    config = load_config(cfg)
    (cache,) = (Path(config.search.artifacts_dir) / "baselines").glob("importance-*.safetensors")
    written = cache.stat().st_mtime_ns
    first = prepare(config).space

    def refuse(self: ModelSpace, criterion: str, batches: object) -> None:
        raise AssertionError("the cached scores were computed again")

    monkeypatch.setattr(ModelSpace, "calibrate_importance", refuse)
    other = load_config(cfg, {"search.study": "second", "budget.macs": "40%"})
    second = prepare(other).space  # another study on the same base model and data: read from the cache
    assert cache.stat().st_mtime_ns == written
    plan = Plan({g.id: 0.5 for g in first.groups}, importance="taylor")
    for a, b in zip(first.apply(plan).state_dict().values(), second.apply(plan).state_dict().values(), strict=True):
        assert a.equal(b)  # the same channels kept
    store = StudyStore(config.storage.url)
    rows = store.candidates(store.study(config.search.study).id)
    assert len(rows) == 3 and all(Plan.from_json(r.plan).importance == "taylor" for r in rows)
    best = max((r for r in rows if r.status == "COMPLETE"), key=lambda r: r.accuracy or 0.0)
    out = tmp_path / "export"
    assert main(["export", str(cfg), "--trial", str(best.trial_number), "--out", str(out)]) == 0
    model = load_exported(out)  # no calibration data needed: every weight comes from the file
    acc, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
    assert acc == best.accuracy
