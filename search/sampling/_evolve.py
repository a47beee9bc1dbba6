"""An evolutionary level search (EvoPress-style): mutate the per-group levels of the best plans so far.

EvoPress (Sieberling et al., 2024) searches per-layer compression levels by
evolution: start from a good configuration, mutate a few layers' levels while
the total stays within the budget, keep the offspring that score best. Here a
plan's levels are the sampler's parameters (a prune ratio per channel group, a
rank fraction per layer, the share at 4 bits, the blocks dropped, the cost
level), and :meth:`spaces.ModelSpace.fit` repairs every offspring onto the
budget, so a mutation may move any parameter freely.

* **Parents** are chosen by a binary tournament among the ``population`` best
  finished trials: best non-dominated rank over the study's objectives first,
  then the first objective (the score). The study's seed plans (the
  allocator's, the uniform and the global-ranking plan, told as trials first)
  are the first population, as EvoPress starts from a strong configuration.
* **A child** copies its parent's parameters; each one mutates with
  probability ``mutation``, and one chosen at random always does: a float moves
  by a Gaussian step of ``sigma`` times its range (in log space for a
  log-scaled one), reflected at its bounds; an integer by one step either way
  (inward at a bound); a categorical value becomes another of its choices.
  Sampled duplicates (plans the study already holds) are not parents.
* Before ``startup`` trials have finished, and for a parameter the parent did
  not have, it samples at random.

Registered as the sampler ``evolve`` (``search.sampler = "evolve"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["EvolutionarySampler"]

_MAX_CHILDREN = 1000  # children remembered for trials not told yet (bounded: see after_trial)


class EvolutionarySampler(BaseSampler):
    """Mutates the per-group levels of the best plans so far (see the module docs)."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        population: int = 8,
        mutation: float = 0.2,
        sigma: float = 0.15,
        startup: int = 4,
    ) -> None:
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self.population, self.mutation, self.sigma, self.startup = population, mutation, sigma, startup
        self._children: dict[int, dict[str, Any]] = {}  # trial number -> its parent's parameters, mutated

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        child = self._child(study, trial)
        if child is None or param_name not in child:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        value = child[param_name]
        try:
            known = param_distribution._contains(param_distribution.to_internal_repr(value))
        except ValueError:  # a categorical value that is not among this study's choices
            known = False
        if not known:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        if self._rng.rand() < child["__mutation__"] or param_name == child["__forced__"]:
            return self._mutate(value, param_distribution)
        return value

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._children.pop(trial.number, None)
        while len(self._children) > _MAX_CHILDREN:  # trials told elsewhere (a Ray trial) never reach here
            self._children.pop(next(iter(self._children)))

    def _child(self, study: Study, trial: FrozenTrial) -> dict[str, Any] | None:
        """The parameters this trial inherits (chosen once per trial), or ``None`` while starting up."""
        if trial.number in self._children:
            return self._children[trial.number]
        best = _best(study, self.population)
        if len(best) < min(self.startup, self.population):
            return None
        a, b = (best[i] for i in self._rng.randint(0, len(best), size=2))
        parent = a if best.index(a) <= best.index(b) else b  # the list is best first
        names = sorted(parent.params)
        child = {**parent.params, "__mutation__": self.mutation, "__forced__": names[self._rng.randint(len(names))]}
        self._children[trial.number] = child
        return child

    def _mutate(self, value: Any, dist: BaseDistribution) -> Any:
        if isinstance(dist, FloatDistribution):
            return _gaussian_step(self._rng, float(value), dist, self.sigma)
        if isinstance(dist, IntDistribution):
            step = dist.step * (1 if self._rng.rand() < 0.5 else -1)
            moved = int(value) + step
            return int(moved if dist.low <= moved <= dist.high else int(value) - step)  # reflected at a bound
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if c != value]
            return others[self._rng.randint(len(others))] if others else value
        return value


def _reflect(x: float, lo: float, hi: float) -> float:
    """``x`` folded back into ``[lo, hi]``: a step past a bound comes back inside instead of sticking to it."""
    if hi <= lo:
        return lo
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


def _gaussian_step(rng: np.random.RandomState, value: float, dist: FloatDistribution, sigma: float) -> float:
    """``value`` moved by a Gaussian step of ``sigma`` times the range (log space if ``dist.log``), reflected
    at the bounds."""
    if dist.log:
        lo, hi = math.log(dist.low), math.log(dist.high)
        moved = math.exp(_reflect(math.log(value) + rng.normal(0.0, sigma * (hi - lo)), lo, hi))
    else:
        moved = _reflect(value + rng.normal(0.0, sigma * (dist.high - dist.low)), dist.low, dist.high)
        if dist.step is not None:
            moved = dist.low + round((moved - dist.low) / dist.step) * dist.step
    return float(min(max(moved, dist.low), dist.high))


def _best(study: Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best finished trials, one per plan: by non-dominated rank over the objectives, then the first
    objective. A sampled duplicate (told the stored result: ``duplicate_of``) is not a plan of its own."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and "duplicate_of" not in t.user_attrs
    ]
    if not done:
        return []
    signs = np.array([1.0 if d is StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    points = np.array([t.values for t in done], dtype=float) * signs  # every objective minimized
    ranks = _nondominated_ranks(points, k)
    order = sorted(range(len(done)), key=lambda i: (ranks[i], points[i, 0]))
    return [done[i] for i in order[:k]]


def _nondominated_ranks(points: np.ndarray, enough: int) -> np.ndarray:
    """Each point's non-dominated rank (0: on the front) when every column is minimized; fronts are peeled
    only until ``enough`` points are ranked (the rest share the next rank)."""
    below: np.ndarray = np.all(points[:, None, :] <= points[None, :, :], axis=-1)
    dominates: np.ndarray = below & np.any(points[:, None, :] < points[None, :, :], axis=-1)  # [j, i]: j dominates i
    ranks = np.full(len(points), 0, dtype=int)
    left = np.ones(len(points), dtype=bool)
    rank = 0
    while left.any() and int((~left).sum()) < enough:
        front = left & ~dominates[left].any(axis=0)  # dominated by no point still left
        ranks[front] = rank
        left &= ~front
        rank += 1
    ranks[left] = rank
    return ranks
