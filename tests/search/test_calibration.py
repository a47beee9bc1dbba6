"""Measurements a study makes once per base model and caches: data-aware channel importance, and the
allocator's sensitivity table."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import Context, evaluate_accuracy, load_data
from search import Search, load_config, load_exported
from search.cli import main
from search.preparation._prepare import prepare
from spaces import ModelSpace, Plan, Sensitivity
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


def test_the_allocator_sensitivity_is_measured_once_and_a_second_study_reads_it(
    make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(search__candidates=1, space__calibration_samples=64)
    search = Search(load_config(cfg)).prepare()
    seeds = search.seed_plans()
    assert seeds[0][0] == "allocator"
    (cache,) = (Path(load_config(cfg).search.artifacts_dir) / "baselines").glob("sensitivity-*.json")
    table = Sensitivity.from_json(cache.read_text())
    assert set(table.points) == {g.id for g in search.prepared.space.groups}
    assert all(pts and pts[-1][0] == 1 for pts in table.points.values())  # measured down to one channel

    def refuse(self: ModelSpace, score: object, ratios: object = None) -> None:
        raise AssertionError("the cached sensitivity was measured again")

    monkeypatch.setattr(ModelSpace, "sensitivity", refuse)
    other = Search(load_config(cfg, {"search.study": "second", "budget.macs": "40%"})).prepare()
    again = other.seed_plans()  # another study of the same base model: the table comes from the cache
    assert again[0][1] != seeds[0][1]  # another budget, another plan, from the same table
