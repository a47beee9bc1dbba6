"""The driver contract: a driver registered with one line is chosen by ``search.backend`` and runs the study's steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from search._config import load_config
from search.drivers import Driver, driver_names, register_driver
from search.drivers._base import _entries
from search.drivers._study import RunResult, Search
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
    del _entries[OneAtATime.name]


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
    assert res.evaluated == 2 and res.total == 2  # the allocator's and the uniform seed plan
    assert {r.kind for r in res.front} <= {"allocator", "uniform"}


def test_an_unknown_backend_names_the_registered_drivers(registered: None, make_config: ConfigMaker) -> None:
    with pytest.raises(ValueError, match="Input should be 'local' or 'ray' or 'one-at-a-time' .got 'dask'."):
        load_config(make_config(), {"search.backend": "dask"})
