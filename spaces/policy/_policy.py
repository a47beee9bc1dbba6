"""Choosing plans: uniform and global-ranking plans, and repairing a plan onto a budget.

Policy only, over the public interface of :class:`ModelSpace` (groups, its
:class:`~spaces.CostModel`); the mechanism is in the modules the space is made of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from spaces._errors import InfeasibleBudgetError, PlanError
from spaces._plan import Plan
from spaces.cost._cost import Cost
from spaces.dimensions import dimensions
from spaces.policy._budget import Budget

if TYPE_CHECKING:
    from spaces._space import ModelSpace

__all__ = ["fit", "global_plan", "uniform_plan"]


def uniform_plan(space: ModelSpace, ratio: float) -> Plan:
    """Remove the same fraction of channels from every group."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"uniform prune ratio must be in [0, 1), got {ratio!r}")
    return Plan({g.id: float(ratio) for g in space.groups}, importance=space.importance, round_to=space.round_to)


def global_plan(space: ModelSpace, budget: Budget, *, max_ratio: float = 0.95) -> Plan:
    """Rank every channel of every group together and remove the least important until ``budget`` holds.

    What torch-pruning's global pruning does: each group's importance (the
    space's criterion) is divided by its mean within the group (``"lamp"`` is
    already normalized), so that groups of different scales compare; a group
    keeps at least one channel and loses at most ``max_ratio`` of them. The
    fewest removals that meet every limit are found by bisection on the exact
    cost, then :func:`fit` moves the plan onto the budget, as every seed plan.
    """
    crit, groups = space.importance, space.groups
    ranked: list[tuple[float, int]] = []
    for i in range(len(groups)):
        score = space.scores.of(i, crit)
        mean = float(score.mean())
        norm = score if crit == "lamp" or mean <= 0 else score / mean
        ranked += [(float(v), i) for v in np.sort(norm)]
    ranked.sort(key=lambda e: e[0])  # least important first (stable: ties keep group order)
    caps = np.array([min(g.channels - 1, int(max_ratio * g.channels)) for g in groups], dtype=np.int64)
    channels = np.array([g.channels for g in groups], dtype=np.int64)
    allowed = [space.allowed_keeps(g) for g in groups]
    limits = budget.absolute(space.base_cost)
    base = space.plan_from_keep(channels)

    def keep_after(n: int) -> np.ndarray:
        removed = np.zeros(len(groups), dtype=np.int64)
        for _, i in _first(ranked, caps, n):
            removed[i] += 1
        keep = channels - removed
        return np.array(
            [a[max(0, np.searchsorted(a, k, side="right") - 1)] for a, k in zip(allowed, keep, strict=True)]
        )

    def ok(n: int) -> bool:
        c = space.costs.cost_at(base, keep_after(n))
        return all(getattr(c, m) <= lim for m, lim in limits.items())

    lo, hi = 0, int(caps.sum())
    if not ok(hi):
        return fit(space, space.plan_from_keep(keep_after(hi)), budget)  # even the cap is over: fit goes below
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return fit(space, space.plan_from_keep(keep_after(lo)), budget)


def _first(ranked: list[tuple[float, int]], caps: np.ndarray, n: int) -> list[tuple[float, int]]:
    """The ``n`` least important channels, skipping those of groups already at their cap."""
    taken = np.zeros(len(caps), dtype=np.int64)
    out: list[tuple[float, int]] = []
    for entry in ranked:
        if len(out) == n:
            break
        i = entry[1]
        if taken[i] < caps[i]:
            taken[i] += 1
            out.append(entry)
    return out


def _fmt(cost: Cost, base: Cost) -> str:
    r = cost.ratio(base)
    out = [f"{m}={v:,} ({r[m]:.1%} of base)" for m, v in cost.as_dict().items()]
    if cost.latency is not None and base.latency:
        out.append(f"latency={cost.latency:.3g} ms ({cost.latency / base.latency:.1%} of base, predicted)")
    return ", ".join(out)


def _limit(metric: str, limit: float) -> str:
    return f"{metric} <= {limit:.3g} ms" if metric == "latency" else f"{metric} <= {limit:,.0f}"


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
    fitter = _Fitter(space, plan, budget)
    fitter.check_feasible()
    best = fitter.scaled()
    if best is None:
        best = fitter.grown(fitter.keep_at(fitter.bisect()))
    return space.plan_from_keep(best, like=plan)


class _Fitter:
    """``fit``'s steps for one plan and budget: the kept counts it may use and the exact test of a budget."""

    def __init__(self, space: ModelSpace, plan: Plan, budget: Budget) -> None:
        self.space, self.plan = space, plan
        self.limits = budget.absolute(space.base_cost)
        if "latency" in self.limits and space.profile is not None and space.cost(plan).latency is None:
            keep = space.keep_counts(plan)
            why = space.profile.unpredictable(space.costs.resolve(plan, keep))
            raise PlanError(f"budget latency cannot be met for this plan: {why}; use a MACs or params budget for it")
        rt = plan.round_to or space.round_to
        self.allowed = [space.allowed_keeps(g, rt) for g in space.groups]
        self.target = space.keep_counts(plan).astype(np.float64)  # the plan's own kept counts
        channels = np.array([g.channels for g in space.groups], dtype=np.float64)
        self.s_hi = float(np.max(channels / self.target)) if len(self.target) else 1.0

    def cost(self, keep: np.ndarray) -> Cost:
        return self.space.costs.cost_at(self.plan, keep)

    def ok(self, keep: np.ndarray) -> bool:
        c = self.cost(keep)
        return all(getattr(c, m) <= lim for m, lim in self.limits.items())

    def check_feasible(self) -> None:
        """Raise :class:`InfeasibleBudgetError`, naming the smallest cost, if even the smallest plan is over."""
        lo_keep = np.array([a[0] for a in self.allowed], dtype=np.int64)
        if not self.ok(lo_keep):
            smallest = self.cost(lo_keep)
            over = ", ".join(_limit(m, lim) for m, lim in self.limits.items() if getattr(smallest, m) > lim)
            raise InfeasibleBudgetError(
                f"budget {over} is infeasible: the smallest achievable cost is {_fmt(smallest, self.space.base_cost)}"
            )

    def keep_at(self, s: float) -> np.ndarray:
        """The plan's kept counts scaled by ``s``, rounded down to allowed counts (at least the smallest)."""
        out = np.empty(len(self.allowed), dtype=np.int64)
        for i, a in enumerate(self.allowed):
            j = np.searchsorted(a, self.target[i] * s, side="right") - 1
            out[i] = a[max(j, 0)]
        return out

    def scaled(self) -> np.ndarray | None:
        """The largest scaling (every group whole) if it meets the budget, else None."""
        keep = self.keep_at(self.s_hi)
        return keep if self.ok(keep) else None

    def bisect(self) -> float:
        """The largest scale factor that meets every limit (bisection on the exact cost)."""
        lo, hi = 0.0, self.s_hi
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.ok(self.keep_at(mid)):
                lo = mid
            else:
                hi = mid
        return lo

    def grown(self, best: np.ndarray) -> np.ndarray:
        """Greedy fill: grow the most shrunk groups (relative to the plan) one allowed step while the budget holds."""
        index = [{int(v): k for k, v in enumerate(a)} for a in self.allowed]
        grew = True
        while grew:
            grew = False
            for i in np.argsort(best / self.target, kind="stable"):
                k = index[i][int(best[i])]
                if k + 1 < len(self.allowed[i]):
                    trial = best.copy()
                    trial[i] = self.allowed[i][k + 1]
                    if self.ok(trial):
                        best = trial
                        grew = True
        return best
