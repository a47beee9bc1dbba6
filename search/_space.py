"""Our compression space as Optuna distributions, and back: pure functions.

* ``prune:<group id>``: the group's prune ratio, ``FloatDistribution(0, max_ratio)``.
* ``rank:<layer>`` (with ``space.rank``): a fraction of the layer's break-even
  rank on the grid 0.1, 0.2, ..., 1.0; 1.0 keeps the layer dense, below that
  the layer gets ``max(1, round(fraction * break_even))`` as its rank, at most
  ``break_even - 1`` (a rank at or above break-even keeps a layer dense). The
  int rank is resolved on the pruned shape, whose break-even is lower: a
  layer pruned hard may stay dense at a rank its unpruned shape would factorize.
* ``level`` (when ``search.floor`` is below the cap): the cost level the plan is
  repaired onto, as a fraction of the budget's cap, log-uniform on
  ``[floor / cap, 1]``.

The sampled plan is then repaired onto ``budget.scaled(level)`` with
``space.fit``, which scales the kept-channel proportions; so what the sampler
chooses is the *shape* of the allocation and its cost level, and the budget
caps its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from spaces import Method, Plan

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution, FloatDistribution

    from spaces import Budget, Cost, ModelSpace

__all__ = ["LEVEL", "distributions", "level_of", "params_from_plan", "plan_from_params"]

_RANK_STEP = 0.1
LEVEL = "level"


def _rank_layers(space: ModelSpace, method: Method | str) -> dict[str, int]:
    """Factorizable layers (for ``method``) with a break-even rank of at least 2."""
    out = {}
    for g in space.layers:
        if method in g.methods:
            mur = g.max_useful_rank(method)
            if mur >= 2:
                out[g.name] = mur
    return out


def distributions(
    space: ModelSpace, *, max_ratio: float, rank: bool, method: Method | str, floor: float = 1.0
) -> dict[str, BaseDistribution]:
    """The sampler's parameters; ``floor`` is the lowest cost level (a fraction of the cap; 1: the cap only)."""
    from optuna.distributions import FloatDistribution

    out: dict[str, BaseDistribution] = {}
    if floor < 1.0:
        out[LEVEL] = FloatDistribution(floor, 1.0, log=True)
    out.update({f"prune:{g.id}": FloatDistribution(0.0, max_ratio) for g in space.groups})
    if rank:
        for name in _rank_layers(space, method):
            out[f"rank:{name}"] = FloatDistribution(_RANK_STEP, 1.0, step=_RANK_STEP)
    return out


def plan_from_params(space: ModelSpace, params: dict[str, Any], *, method: Method | str) -> Plan:
    prune, ranks = {}, {}
    channels = {g.id: g.channels for g in space.groups}
    mur = _rank_layers(space, method) if any(k.startswith("rank:") for k in params) else {}
    for key, value in params.items():
        kind, _, name = key.partition(":")
        if kind == "prune":
            c = channels[name]
            prune[name] = min(float(value), (c - 1) / c)  # keep at least one channel of small groups
        elif kind == "rank" and value < 1.0 - 1e-9:  # below 1: factorized (break-even or more would be dense)
            ranks[name] = min(mur[name] - 1, max(1, round(float(value) * mur[name])))
    return Plan(
        prune=prune,
        importance=space.importance,
        round_to=space.round_to,
        rank=ranks,
        method={k: method for k in ranks},
    )


def params_from_plan(
    space: ModelSpace, plan: Plan, dists: dict[str, BaseDistribution], *, method: Method | str, level: float = 1.0
) -> dict[str, Any]:
    """The sampler parameters closest to ``plan`` (to tell the sampler about seed plans) at cost ``level``."""
    params: dict[str, Any] = {}
    mur = _rank_layers(space, method)
    for key, dist in dists.items():
        kind, _, name = key.partition(":")
        if kind == LEVEL:
            d = cast("FloatDistribution", dist)
            params[key] = min(max(float(level), d.low), d.high)
        elif kind == "prune":
            params[key] = min(float(plan.prune.get(name, 0.0)), cast("FloatDistribution", dist).high)
        else:
            spec = plan.rank.get(name)
            if spec is None or plan.method_of(name) != method:
                params[key] = 1.0
                continue
            r = spec if isinstance(spec, int) else max(1, round(spec * max(space.layer(name).full_ranks(method))))
            frac = round(min(1.0, r / mur[name]) / _RANK_STEP) * _RANK_STEP
            params[key] = min(1.0 - _RANK_STEP, max(_RANK_STEP, round(frac, 10)))  # factorized: below 1.0 (dense)
    return params


def level_of(cost: Cost, budget: Budget, base: Cost) -> float:
    """The cost level of ``cost``: its largest share of one of ``budget``'s limits (1: at the cap)."""
    return max(getattr(cost, m) / lim for m, lim in budget.absolute(base).items())
