"""The driver contract: a driver registered with one line is chosen by ``search.backend`` and runs the study's steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from search._config import load_config
from search.drivers import Driver, driver_names, register_driver
from search.drivers._base import DRIVERS
from search.study._study import RunResult, Search
from storage import scores_path
from tests.search.conftest import ConfigMaker


class OneAtATime(Driver):
    """A toy driver: evaluates the seed plans only, through the same steps as the local one."""

    name = "one-at-a-time"
    connected = 0

    def connect(self, search: Search) -> None:
        OneAtATime.connected += 1

    def run(self, search: Search, on_candidate: Callable[[RunResult], None] | None) -> RunResult:
        res, seeds = search.new_result(), search.seed_plans()
        while seeds:
            prop = search.propose(seeds)
            cid = search.reserve(prop, res)
            if cid is not None:
                recorder = search.teller.recorder(prop.trial_number, prop.params, cid, prop.plan.hash, prop.kind)
                search.runner.evaluate(cid, prop.plan, prop.cost, recorder)
                res.evaluated += 1
        return search.conclude(res)


@pytest.fixture
def registered() -> Iterator[None]:
    register_driver(OneAtATime)  # the one line a new driver needs
    yield
    DRIVERS.unregister(OneAtATime.name)


def test_a_registered_driver_is_chosen_by_the_config_and_runs_the_steps(
    registered: None, make_config: ConfigMaker
) -> None:
    assert driver_names() == ("local", "ray", "one-at-a-time")
    cfg = load_config(make_config(), {"search.backend": "one-at-a-time"})
    search = Search(cfg)
    with pytest.raises(RuntimeError, match=r"call Search.prepare\(\) first"):
        _ = search.teller  # reading it never prepares the study
    res = search.run()  # prepares explicitly, connecting the driver first
    assert OneAtATime.connected == 1
    assert res.evaluated == 3 and res.total == 3  # the allocator's, the uniform and the global-ranking seed plan
    assert {r.kind for r in res.front} <= {"allocator", "uniform", "global"}


def test_an_unknown_backend_names_the_registered_drivers(registered: None, make_config: ConfigMaker) -> None:
    with pytest.raises(ValueError, match="Input should be 'local' or 'ray' or 'one-at-a-time' .got 'dask'."):
        load_config(make_config(), {"search.backend": "dask"})


# ---------------------------------------------------------------------- a claimed candidate finished by both workers
@pytest.mark.parametrize("first", ["thought dead", "claimer"])
def test_a_claimed_candidate_finished_by_both_workers_is_recorded_and_told_once(
    first: str, make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker thought dead (a SIGKILLed Ray driver's trial outlives it) finishes the candidate another claimed.

    Whoever finishes first records it and tells Optuna, once, on a trial whose state is the row's;
    the second writes nothing and leaves no weights file behind.
    """
    import optuna

    from search.study import _study
    from spaces import Status

    cfg = load_config(make_config(), {"search.candidates": 4})
    slow, claimer = Search(cfg).prepare(), Search(cfg)
    claimer.worker = "elsewhere:1"
    claimer.prepare()
    prop = slow.propose([])  # a sampled plan, on an asked trial
    cid = slow.reserve(prop, slow.new_result())
    assert cid is not None and prop.trial_number is not None
    monkeypatch.setattr(_study, "is_dead", lambda owner: owner == slow.worker)
    (row,) = claimer.claim_stale(claimer.new_result())  # fails the slow worker's asked trial
    asked = slow.teller.recorder(prop.trial_number, prop.params, cid, prop.plan.hash, prop.kind)
    finishers = {
        "thought dead": lambda: slow.runner.evaluate(cid, prop.plan, prop.cost, asked),
        "claimer": lambda: claimer.runner.evaluate(cid, *claimer.relive(row)),
    }
    winner = finishers.pop(first)()
    loser = next(iter(finishers.values()))()
    assert (winner.recorded, loser.recorded, winner.status, loser.artifact) == (True, False, Status.COMPLETE, None)
    stored = slow.prepared.store.candidate(slow.prepared.study_id, id=cid)
    assert stored.artifact == winner.artifact and stored.trial_number == winner.trial_number
    # The winner's weights and its per-image scores; nothing of the loser's.
    assert sorted(p.name for p in Path(winner.artifact).parent.glob(f"{cid}*.safetensors")) == sorted(
        [Path(winner.artifact).name, scores_path(winner.artifact).name]
    )
    trials = optuna.load_study(study_name=cfg.search.study, storage=slow.prepared.store.url).get_trials()
    told = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("plan_hash") == prop.plan.hash]
    assert [t.number for t in told] == [stored.trial_number] and stored.trial_number != prop.trial_number
    assert told[0].values == [stored.accuracy_at(0), stored.macs]
    assert trials[prop.trial_number].state.name == "FAIL"  # failed by the claim; the outcome went on an added trial
    assert not [t for t in trials if t.state.name == "RUNNING"]
