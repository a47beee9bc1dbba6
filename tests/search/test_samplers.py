"""The sampler registry and the evolutionary level search (``search.sampling._evolve``)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search import SAMPLERS, SamplerFactory, load_config, make_sampler, register_sampler
from search.cli import main
from search.sampling._evolve import EvolutionarySampler
from storage import StudyStore
from tests.search.conftest import ConfigMaker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_every_built_in_sampler_builds() -> None:
    assert SAMPLERS.builtins == ("tpe", "nsga2", "gp", "evolve", "random")
    kinds = {name: type(make_sampler(name, 0, 30)).__name__ for name in SAMPLERS.builtins}
    assert kinds == {
        "tpe": "TPESampler",
        "nsga2": "NSGAIISampler",
        "gp": "GPSampler",
        "evolve": "EvolutionarySampler",
        "random": "RandomSampler",
    }


def _levels(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    """Eight per-group levels; the score rewards levels near a hidden target (the shape of a level search)."""
    target = [0.1, 0.8, 0.3, 0.6, 0.2, 0.9, 0.5, 0.4]

    def objective(trial: optuna.Trial) -> float:
        xs = [trial.suggest_float(f"prune:g{i}", 0.0, 0.9) for i in range(8)]
        return -sum((x - t) ** 2 for x, t in zip(xs, target, strict=True))

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    return study


def test_the_evolutionary_search_beats_random_search_on_a_level_search() -> None:
    for seed in (0, 1, 2):
        evolved = _levels(EvolutionarySampler(seed=seed), 80).best_value
        random = _levels(optuna.samplers.RandomSampler(seed=seed), 80).best_value
        assert evolved > random, (seed, evolved, random)


def test_a_child_is_its_parent_with_a_few_levels_moved() -> None:
    study = _levels(EvolutionarySampler(seed=3, population=4, startup=4), 30)
    trials = study.trials
    parents = trials[:4]  # random: the start-up
    changed = []
    for t in trials[4:]:
        closest = min(trials[: t.number], key=lambda p: sum(p.params[k] != t.params[k] for k in t.params))
        changed.append(sum(closest.params[k] != t.params[k] for k in t.params))
    assert all(1 <= n <= 6 for n in changed) and sum(changed) / len(changed) < 3.5, changed
    assert len({tuple(p.params.values()) for p in parents}) == 4


class _Fixed(SamplerFactory):
    name = "fixed-test"

    def build(self, seed: int, candidates: int) -> Any:
        return optuna.samplers.RandomSampler(seed=seed + 1)


def test_a_plug_in_sampler_is_one_registration(make_config: ConfigMaker) -> None:
    register_sampler(_Fixed, replace=True)
    try:
        cfg = load_config(make_config(search__sampler="fixed-test"))
        assert cfg.search.sampler == "fixed-test" and type(make_sampler("fixed-test", 0, 5)).__name__ == "RandomSampler"
    finally:
        SAMPLERS.unregister("fixed-test")
    with pytest.raises(ValueError, match="'evolve' or 'random'"):
        load_config(make_config(search__sampler="fixed-test"))


def test_a_digits_study_with_the_evolutionary_search(make_config: ConfigMaker) -> None:
    cfg = make_config(search__candidates=7, search__sampler="evolve")
    assert main(["run", str(cfg), "--quiet"]) == 0
    store = StudyStore(load_config(cfg).storage.url)
    rows = store.candidates(store.study("t").id)
    kinds = [r.kind.value if r.kind else None for r in rows]
    assert len(rows) == 7 and all(r.status == "COMPLETE" for r in rows)
    assert kinds[:3] == ["allocator", "uniform", "global"] and kinds[3:] == ["sampled"] * 4
    base = store.study("t").base_cost["macs"]
    assert all(r.macs is not None and r.macs <= 0.5 * base for r in rows)
