"""The contract of a search driver, and the registry that ``search.backend`` chooses from.

A driver decides *who schedules* a study's candidates; *what* a candidate is
and how it is recorded is the same for every driver, in the steps of
:class:`search.study._study.Search` that each driver calls:

1. **seed** (:meth:`Search.seed_plans`): the allocator's plans (at the cap and
   at the floor) and the uniform plan, evaluated first;
2. **propose** and **repair** (:meth:`Search.propose`): the next seed, or a plan
   sampled by the study's Optuna twin, moved onto its cost level by
   ``space.fit``, so every candidate meets the budget;
3. **reserve** (:meth:`Search.reserve`): the store takes the plan by its hash,
   or says the study holds it already (the sampler is told) or is full;
4. **run** (:meth:`search.study._candidate.CandidateRunner.evaluate`): apply,
   evaluate rung by rung, tell Optuna and record, in whichever process runs it;
   candidates a dead worker left are claimed first (:meth:`Search.claim_stale`,
   evaluated again with :meth:`Search.relive`);
5. **conclude** (:meth:`Search.conclude`): the front and the count.

The store is the single source of truth: a driver may run a candidate's life
more than once (an at-least-once scheduler), and the store records it once.
A driver is called in this order: :meth:`Driver.connect` before the study is
prepared (so that an unreachable cluster fails before any work), then
:meth:`Driver.run` once per ``Search.run``. Drivers keep no state between runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from spaces import Registry, UsageError

if TYPE_CHECKING:
    from search.study._study import RunResult, Search

__all__ = ["DRIVERS", "Driver", "driver", "driver_names", "register_driver"]


class Driver(ABC):
    """Schedules a prepared study's candidates until the study holds ``search.candidates`` of them."""

    name: str

    def connect(self, search: Search) -> None:
        """Reach what the driver schedules on, before the study is prepared (nothing by default)."""
        return None

    @abstractmethod
    def run(self, search: Search, on_candidate: Callable[[RunResult], None] | None) -> RunResult:
        """Evaluate candidates (the steps in the module docs); ``on_candidate`` hears each one's end."""


DRIVERS: Registry[Driver] = Registry(
    "search driver",
    Driver,
    group="prunetune.drivers",
    builtins={"local": "search.drivers._local:LocalDriver", "ray": "search.drivers._ray:RayDriver"},
    error=UsageError,
    what="search.backend",
)
_EXTRAS = {"ray": ("Ray Tune", "prunetune[ray]")}  # what a driver needs, and the pip extra that brings it


def register_driver(d: Driver | type[Driver]) -> Driver:
    """Add a driver (an instance or a class) under its ``name``; returns the instance."""
    return DRIVERS.register(d, replace=True)


def driver_names() -> tuple[str, ...]:
    return DRIVERS.names()


def driver(name: str) -> Driver:
    """The driver registered as ``name``; a one-line error lists the valid names or the missing extra."""
    try:
        return DRIVERS.get(name)
    except ImportError as exc:
        needs, extra = _EXTRAS.get(name, ("its libraries", "prunetune"))
        raise UsageError(f"search.backend = {name!r} needs {needs}: pip install '{extra}' ({exc})") from None
