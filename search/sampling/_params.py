"""Our compression space as Optuna distributions, and back: pure functions over the plan dimensions.

Every registered plan dimension (:mod:`spaces.dimensions`) says which sampler
parameters it has (:class:`spaces.dimensions.ParamSpec`, keyed by a unit: a
group id, a layer name) and how their values map to plan entries. Here each
becomes an Optuna ``FloatDistribution`` named ``"<dimension key>:<unit>"``:

* ``prune:<group id>``: the group's prune ratio, uniform on ``[0, max_ratio]``;
* ``rank:<layer>`` (with ``space.rank``): a fraction of the layer's break-even
  rank on the grid 0.1, 0.2, ..., 1.0; 1.0 keeps the layer dense, below that
  the layer gets ``max(1, round(fraction * break_even))`` as its rank, at most
  ``break_even - 1``. The int rank is resolved on the pruned shape, whose
  break-even is lower: a layer pruned hard may stay dense at a rank its
  unpruned shape would factorize;
* ``level`` (when ``search.floor`` is below the cap): the cost level the plan is
  repaired onto, as a fraction of the budget's cap, log-uniform on
  ``[floor / cap, 1]``.

The sampled plan is then repaired onto ``budget.scaled(level)`` with
``space.fit``, which scales the kept-channel proportions; so what the sampler
chooses is the *shape* of the allocation and its cost level, and the budget
caps its size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from spaces import Plan
from spaces.dimensions import ParamSpec, Sampled, dimension, role_of, with_role

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution, FloatDistribution

    from spaces import Budget, Cost, ModelSpace

__all__ = ["LEVEL", "distributions", "level_of", "params_from_plan", "plan_from_params"]

LEVEL = "level"
_SEP = ":"


def _name(key: str, unit: str) -> str:
    return f"{key}{_SEP}{unit}"


def _by_dimension(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"prune:a": v, "level": l}`` as ``{"prune": {"a": v}}`` (the level is not a dimension's)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        key, sep, unit = name.partition(_SEP)
        if sep:
            out.setdefault(key, {})[unit] = value
    return out


def _options(options: Mapping[str, Any] | None, more: Mapping[str, Any]) -> dict[str, Any]:
    return {**(options or {}), **more}


def distributions(
    space: ModelSpace, options: Mapping[str, Any] | None = None, *, floor: float = 1.0, **more: Any
) -> dict[str, BaseDistribution]:
    """The sampler's parameters for the study's space options; ``floor`` is the lowest cost level (1: the cap).

    Options (``max_ratio``, ``rank``, ``method``, ...; the config's ``[space]``)
    come as a mapping, as keywords, or both.
    """
    from optuna.distributions import FloatDistribution

    options = _options(options, more)
    out: dict[str, BaseDistribution] = {}
    if floor < 1.0:
        out[LEVEL] = FloatDistribution(floor, 1.0, log=True)
    for dim in with_role(Sampled):
        for unit, spec in dim.params(space, options).items():
            out[_name(dim.key, unit)] = FloatDistribution(spec.low, spec.high, step=spec.step, log=spec.log)
    return out


def plan_from_params(
    space: ModelSpace, params: Mapping[str, Any], options: Mapping[str, Any] | None = None, **more: Any
) -> Plan:
    """The plan the sampled ``params`` stand for (every dimension maps its own)."""
    options = _options(options, more)
    entries: dict[str, Any] = {}
    values = _by_dimension(params)
    for dim in with_role(Sampled):
        if dim.key in values:
            entries.update(dim.from_params(space, values[dim.key], options))
    return Plan(importance=space.importance, round_to=space.round_to, **entries)


def params_from_plan(
    space: ModelSpace,
    plan: Plan,
    dists: Mapping[str, BaseDistribution],
    options: Mapping[str, Any] | None = None,
    *,
    level: float = 1.0,
    **more: Any,
) -> dict[str, Any]:
    """The sampler parameters closest to ``plan`` (to tell the sampler about seed plans) at cost ``level``."""
    options = _options(options, more)
    params: dict[str, Any] = {}
    if LEVEL in dists:
        d = cast("FloatDistribution", dists[LEVEL])
        params[LEVEL] = min(max(float(level), d.low), d.high)
    for key, units in _by_dimension(dists).items():
        specs = {unit: _spec(cast("FloatDistribution", dist)) for unit, dist in units.items()}
        player = role_of(dimension(key), Sampled)
        values = player.to_params(space, plan, specs, options) if player is not None else {}
        params.update({_name(key, unit): values[unit] for unit in units})
    return params


def _spec(dist: FloatDistribution) -> ParamSpec:
    return ParamSpec(dist.low, dist.high, step=dist.step, log=dist.log)


def level_of(cost: Cost, budget: Budget, base: Cost) -> float:
    """The cost level of ``cost``: its largest share of one of ``budget``'s limits (1: at the cap)."""
    return max(getattr(cost, m) / lim for m, lim in budget.absolute(base).items())
