"""Choosing plans: uniform plans and repairing a plan onto a budget.

Policy only, over the public interface of :class:`ModelSpace` (groups, its
:class:`~spaces.CostModel`); the mechanism is in the modules the space is made of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from spaces._budget import Budget
from spaces._cost import Cost
from spaces._errors import InfeasibleBudgetError, PlanError
from spaces._plan import Plan
from spaces.dimensions import dimensions

if TYPE_CHECKING:
    from spaces._space import ModelSpace

__all__ = ["fit", "uniform_plan"]


def uniform_plan(space: ModelSpace, ratio: float) -> Plan:
    """Remove the same fraction of channels from every group."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"uniform prune ratio must be in [0, 1), got {ratio!r}")
    return Plan({g.id: float(ratio) for g in space.groups}, importance=space.importance, round_to=space.round_to)


def _fmt(cost: Cost, base: Cost) -> str:
    r = cost.ratio(base)
    return ", ".join(f"{m}={v:,} ({r[m]:.1%} of base)" for m, v in cost.as_dict().items())


def fit(space: ModelSpace, plan: Plan, budget: Budget) -> Plan:
    """Move ``plan`` onto ``budget``.

    Only the pruning moves (the dimension whose ``fit_rule`` is ``"moved"``);
    every other dimension of :mod:`spaces.dimensions` is held: its entries stay
    and are resolved on each pruned shape visited (the ranks, under the
    break-even rule below). Each dimension may first hand ``fit`` a cheaper
    variant of the plan to start from (:meth:`spaces.dimensions.Dimension.relax`;
    the built-in ones keep the plan as it is). The plan's kept-channel
    proportions are scaled by one factor ``s`` (bisection on the analytic
    cost, which grows with ``s``) to the largest ``s`` that meets every limit;
    then groups are grown one allowed step at a time, the most shrunk
    (relative to the plan) first, while every limit still holds. The
    result meets every limit, and the tightest one is usually within 2 % of it
    (the channel granularity of small models may leave more). A plan already
    within budget is grown toward it, so the budget is used, not wasted.

    Ranks follow the same break-even rule as :meth:`ModelSpace.apply`: where
    the pruning puts a layer's rank at or above its (pruned) break-even rank,
    the layer is costed dense, exactly as it will be built. Such a switch can
    make the cost rise slightly as ``s`` falls, but every plan kept is checked
    on the exact cost, so the result still meets every limit.

    Raises :class:`InfeasibleBudgetError`, naming the smallest achievable cost,
    when even the smallest plan exceeds a limit.
    """
    for dim in dimensions():
        plan = dim.relax(space, plan)
    space.validate(plan)
    base = space.base_cost
    limits = budget.absolute(base)
    rt = plan.round_to or space.round_to
    allowed = [space.allowed_keeps(g, rt) for g in space.groups]

    def cost_at(keep: np.ndarray) -> Cost:
        return space.costs.cost_at(plan, keep)

    def ok(keep: np.ndarray) -> bool:
        c = cost_at(keep)
        return all(getattr(c, m) <= lim for m, lim in limits.items())

    lo_keep = np.array([a[0] for a in allowed], dtype=np.int64)
    if not ok(lo_keep):
        smallest = cost_at(lo_keep)
        over = ", ".join(f"{m} <= {lim:,.0f}" for m, lim in limits.items() if getattr(smallest, m) > lim)
        raise InfeasibleBudgetError(
            f"budget {over} is infeasible: the smallest achievable cost is {_fmt(smallest, base)}"
        )
    target = space.keep_counts(plan).astype(np.float64)  # the plan's own kept counts

    def keep_at(s: float) -> np.ndarray:
        out = np.empty(len(allowed), dtype=np.int64)
        for i, a in enumerate(allowed):
            j = np.searchsorted(a, target[i] * s, side="right") - 1
            out[i] = a[max(j, 0)]
        return out

    channels = np.array([g.channels for g in space.groups], dtype=np.float64)
    s_hi = float(np.max(channels / target)) if len(target) else 1.0
    if ok(keep_at(s_hi)):
        best = keep_at(s_hi)
    else:
        lo, hi = 0.0, s_hi
        for _ in range(60):
            mid = (lo + hi) / 2
            if ok(keep_at(mid)):
                lo = mid
            else:
                hi = mid
        best = keep_at(lo)
        # greedy fill: grow the most shrunk groups while the budget holds
        index = [{int(v): k for k, v in enumerate(a)} for a in allowed]
        grew = True
        while grew:
            grew = False
            for i in np.argsort(best / target, kind="stable"):
                k = index[i][int(best[i])]
                if k + 1 < len(allowed[i]):
                    trial = best.copy()
                    trial[i] = allowed[i][k + 1]
                    if ok(trial):
                        best = trial
                        grew = True
    return space.plan_from_keep(best, like=plan)
