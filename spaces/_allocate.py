"""The COBLA-style allocator: which channels and singular values to keep under a budget.

Formulation (a 0-1 integer program, solved with ``scipy.optimize.milp``/HiGHS):

* **Channel blocks.** Each group's channels, sorted by importance (the space's
  criterion, on the original weights), are cut into at most ``blocks`` blocks
  at the group's allowed keep counts (``round_to``). ``z[g, b] = 1`` keeps
  block ``b``; blocks are kept in order (``z[g, b+1] <= z[g, b]``); the first
  block (the smallest allowed count) is always kept. Value of a block: its
  share of the group's total importance, so every group is worth 1 when whole.
* **Singular values.** Each factorizable layer either stays dense (``d[l] = 1``,
  value 1) or is factorized by SVD with rank ``R[l, b]`` when its first ``b``
  rank blocks are kept (``x[l, b]``, in order, ``x[l, 1] + d[l] = 1``). Value of
  a rank block: its share of the layer's squared singular values (energy).
  Ranks go up to one below the layer's break-even rank (a rank at or above
  it keeps the layer dense: :meth:`spaces.LayerGeom.factor_ranks`), so
  factorizing always saves and every rank is costed as the plan applies it.
* **Constraints.** Every budget limit (MACs, params, bytes) at once.

Pruning and factorization interact: a conv's cost is ``C_in * C_out`` (a
product of two groups' kept counts) and a factorized layer's rank cost depends
on its pruned shape. We **linearise**: around the current plan, the exact
analytic cost is replaced by its first-order expansion (one-channel finite
differences per group; per-rank and dense costs of each layer at the current
pruned shape), the program is solved, and the expansion is redone around the
new plan (a few rounds); a rank that the new plan's pruning puts at or above
its layer's break-even rank leaves that layer dense, as the plan will apply it.
The exact cost then decides: a limit that is exceeded is tightened by the
overshoot and the program re-solved. Energies use the
unpruned layer's spectrum. Finally the plan is passed through
:func:`spaces.fit`, which only grows a feasible plan until no group can grow,
so the result meets the budget and ``fit`` returns it unchanged.

If HiGHS fails or hits its time limit without a solution, a greedy Lagrangian
heuristic (drop the item with the least value lost per weighted cost saved
until the linear model fits) is used instead; :attr:`Allocation.solver` says
so and a :class:`AllocatorFallbackWarning` is issued.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from spaces._budget import Budget
from spaces._plan import Plan

if TYPE_CHECKING:
    from spaces._space import ModelSpace

__all__ = ["Allocation", "AllocatorFallbackWarning", "allocate"]


class AllocatorFallbackWarning(UserWarning):
    """The integer program was not solved; the greedy heuristic's plan was used."""


@dataclass
class Allocation:
    """The allocator's result: its plan, and how the solve went (solver "milp" or "greedy", time, rounds)."""

    plan: Plan
    solver: str  # "milp" or "greedy"
    seconds: float
    rounds: int
    value: float  # objective: kept importance shares + kept energy shares
    messages: list[str] = field(default_factory=list)


@dataclass
class _Program:
    """The linear model around one plan."""

    values: np.ndarray  # per variable
    costs: np.ndarray  # [metric, variable]
    const: np.ndarray  # [metric]
    const_value: float
    lb: np.ndarray
    ub: np.ndarray
    order: list[tuple[int, int]]  # (later, earlier): x[later] <= x[earlier]
    onehot: list[tuple[int, int]]  # (a, b): x[a] + x[b] == 1


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence HiGHS, which prints debug lines to file descriptor 1 even with disp=False."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


_TIGHTEN = 6  # extra rounds allowed for tightening violated limits


def _levels(allowed: np.ndarray, blocks: int) -> np.ndarray:
    idx = np.unique(np.linspace(0, len(allowed) - 1, min(blocks, len(allowed) - 1) + 1).round().astype(int))
    return allowed[idx]


class _Allocator:
    def __init__(self, space: ModelSpace, budget: Budget, prune: bool, rank: bool, blocks: int) -> None:
        self.space = space
        self.limits = budget.absolute(space.base_cost)
        self.metrics = list(self.limits)
        self.prune, self.rank = prune, rank
        groups = space.groups
        self.channels = np.array([g.channels for g in groups], dtype=np.int64)
        orders = space.scores.order(space.importance)
        self.levels: list[np.ndarray] = []
        self.level_value: list[np.ndarray] = []
        for i, (g, order) in enumerate(zip(groups, orders, strict=True)):
            scores = space.scores.of(i, space.importance)[order]
            cum = np.concatenate([[0.0], np.cumsum(scores)])
            lv = _levels(space.allowed_keeps(g), blocks) if prune else np.array([g.channels])
            self.levels.append(lv)
            # a group is worth one unit per layer whose outputs it prunes ("normalised per layer")
            weight = max(1, len(g.outputs))
            share = cum[lv] / cum[-1] if cum[-1] > 0 else lv / g.channels
            self.level_value.append(weight * share)
        self.layers = [layer.name for layer in space.layers] if rank else []
        self.last_status = "not run"
        self.energy = {name: space.energy(name) for name in self.layers}

    # ---------------------------------------------------------------- model
    def program(self, keep: np.ndarray, factors: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[_Program, list]:
        space, metrics = self.space, self.metrics
        values: list[float] = []
        costs: list[np.ndarray] = []
        lb: list[float] = []
        ub: list[float] = []
        order: list[tuple[int, int]] = []
        onehot: list[tuple[int, int]] = []
        layout: list = []
        const_value = 0.0

        def vec(c: object) -> np.ndarray:
            return np.array([getattr(c, m) for m in metrics], dtype=np.float64)

        at = vec(space.costs.cost_of_keep(keep, factors))
        const = at.copy()
        # pruning: one-channel finite differences of the exact cost
        for g, lv in enumerate(self.levels):
            step = np.zeros_like(keep)
            if keep[g] > 1:
                step[g] = 1
                grad = at - vec(space.costs.cost_of_keep(keep - step, factors))
            elif keep[g] < self.channels[g]:
                step[g] = 1
                grad = vec(space.costs.cost_of_keep(keep + step, factors)) - at
            else:
                grad = np.zeros(len(metrics))
            const -= grad * keep[g]
            const += grad * lv[0]
            vals = self.level_value[g]
            first = len(values)
            for b in range(1, len(lv)):
                values.append(vals[b] - vals[b - 1])
                costs.append(grad * (lv[b] - lv[b - 1]))
                lb.append(0.0)
                ub.append(1.0)
                if b > 1:
                    order.append((len(values) - 1, len(values) - 2))
            layout.append(("group", g, first, len(values)))
            const_value += vals[0]
        # ranks: dense or factorized, costs at the current pruned shape
        for name in self.layers:
            geom = space.costs.pruned_geom(name, keep)
            r_max = geom.max_useful_rank("svd") - 1  # at break-even the layer stays dense
            dm, dp = geom.dense_cost()
            byte = space.costs.element_size(name)
            dense = np.array([{"macs": dm, "params": dp, "bytes": dp * byte}[m] for m in metrics], dtype=np.float64)
            um, up = geom.factor_cost("svd", (1,))
            unit = np.array([{"macs": um, "params": up, "bytes": up * byte}[m] for m in metrics], dtype=np.float64)
            if name in factors:
                const -= unit * factors[name][1][0]
            else:
                const -= dense
            d_idx = len(values)
            values.append(1.0)
            costs.append(dense)
            lb.append(0.0)
            ub.append(1.0)
            if r_max < 1:
                lb[d_idx] = 1.0
                layout.append(("layer", name, d_idx, d_idx + 1, np.array([0])))
                continue
            ranks = _levels(np.arange(1, r_max + 1), 16)
            energy = self.energy[name]
            e = energy[np.minimum(ranks, len(energy)) - 1]
            prev_r, prev_e = 0, 0.0
            for b, (r, en) in enumerate(zip(ranks, e, strict=True)):
                values.append(float(en - prev_e))
                costs.append(unit * (r - prev_r))
                lb.append(0.0)
                ub.append(1.0)
                if b == 0:
                    onehot.append((d_idx, len(values) - 1))
                else:
                    order.append((len(values) - 1, len(values) - 2))
                prev_r, prev_e = r, en
            layout.append(("layer", name, d_idx, len(values), ranks))
        prog = _Program(
            values=np.array(values),
            costs=np.array(costs).T.reshape(len(metrics), -1),
            const=const,
            const_value=const_value,
            lb=np.array(lb),
            ub=np.array(ub),
            order=order,
            onehot=onehot,
        )
        return prog, layout

    def decode(self, x: np.ndarray, layout: list) -> tuple[np.ndarray, dict[str, tuple[str, tuple[int, ...]]]]:
        keep = self.channels.copy()
        factors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for entry in layout:
            if entry[0] == "group":
                _, g, a, b = entry
                kept = round(float(x[a:b].sum()))
                keep[g] = self.levels[g][kept]
            else:
                _, name, d_idx, end, ranks = entry
                if x[d_idx] > 0.5:
                    continue
                kept = round(float(x[d_idx + 1 : end].sum()))
                factors[name] = ("svd", (int(ranks[max(kept, 1) - 1]),))
        return keep, factors

    def applied(
        self, keep: np.ndarray, factors: dict[str, tuple[str, tuple[int, ...]]]
    ) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``factors`` as a plan applies them at ``keep``: a rank at or above break-even leaves the layer dense."""
        out = {}
        for name, (method, (r,)) in factors.items():
            ranks = self.space.costs.pruned_geom(name, keep).factor_ranks(method, r)
            if ranks is not None:
                out[name] = (method, ranks)
        return out

    # ---------------------------------------------------------------- solvers
    def solve_milp(self, prog: _Program, limits: np.ndarray, time_limit: float) -> np.ndarray | None:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        n = len(prog.values)
        rows, cols, data = [], [], []
        for k, (later, earlier) in enumerate(prog.order):
            rows += [k, k]
            cols += [later, earlier]
            data += [1.0, -1.0]
        constraints = []
        if prog.order:
            a = coo_matrix((data, (rows, cols)), shape=(len(prog.order), n))
            constraints.append(LinearConstraint(a, -np.inf, 0.0))
        if prog.onehot:
            r2 = [k for k in range(len(prog.onehot)) for _ in (0, 1)]
            c2 = [i for pair in prog.onehot for i in pair]
            a = coo_matrix((np.ones(len(c2)), (r2, c2)), shape=(len(prog.onehot), n))
            constraints.append(LinearConstraint(a, 1.0, 1.0))
        constraints.append(LinearConstraint(prog.costs, -np.inf, limits - prog.const))
        with _quiet_stdout():
            res = milp(
                c=-prog.values,
                integrality=np.ones(n),
                bounds=Bounds(prog.lb, prog.ub),
                constraints=constraints,
                options={"time_limit": time_limit, "disp": False, "mip_rel_gap": 1e-3},
            )
        self.last_status = str(res.message)
        if res.x is None:
            return None
        return np.round(res.x)

    def solve_greedy(self, prog: _Program, layout: list, limits: np.ndarray) -> np.ndarray:
        """Lagrangian greedy: from everything kept and dense, repeatedly make the move that loses
        the least value per unit of (overshoot-weighted) cost saved, until the linear model fits."""
        # state per entry: groups -> kept blocks; layers -> -1 dense, else kept rank blocks
        state = [e[3] - e[2] if e[0] == "group" else -1 for e in layout]

        def vector(st: list[int]) -> np.ndarray:
            x = np.zeros(len(prog.values))
            for e, k in zip(layout, st, strict=True):
                if e[0] == "group":
                    x[e[2] : e[2] + k] = 1.0
                elif k < 0:
                    x[e[2]] = 1.0
                else:
                    x[e[2] + 1 : e[2] + 1 + k] = 1.0
            return x

        x = vector(state)
        for _ in range(sum(e[3] - e[2] + 1 for e in layout) + 1):
            over = (prog.costs @ x + prog.const - limits) / np.maximum(limits, 1.0)
            if (over <= 0).all():
                break
            lam = np.maximum(over, 0.0)
            best: tuple[float, list[int], np.ndarray] | None = None
            for i, (e, k) in enumerate(zip(layout, state, strict=True)):
                if e[0] == "group":
                    if k == 0:
                        continue
                    nk = k - 1
                elif k < 0:
                    if e[3] - e[2] <= 1 or prog.lb[e[2]] > 0.5:
                        continue
                    nk = e[3] - e[2] - 1  # dense -> factorized at the largest rank
                elif k > 1:
                    nk = k - 1
                else:
                    continue
                trial = state.copy()
                trial[i] = nk
                tx = vector(trial)
                saved = float(lam @ (prog.costs @ (x - tx)))
                if saved <= 0:
                    continue
                ratio = float(prog.values @ (x - tx)) / saved
                if best is None or ratio < best[0]:
                    best = (ratio, trial, tx)
            if best is None:
                break
            _, state, x = best
        return x


def allocate(
    space: ModelSpace,
    budget: Budget,
    *,
    prune: bool = True,
    rank: bool = True,
    time_limit: float = 10.0,
    rounds: int = 4,
    blocks: int = 16,
) -> Allocation:
    """Solve the allocation program (see the module docs); returns the plan and how it went."""
    if not (prune or rank):
        raise ValueError("allocate needs prune=True, rank=True or both")
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a spaces.Budget, got {type(budget).__name__}")
    t0 = time.perf_counter()
    alloc = _Allocator(space, budget, prune, rank, blocks)
    limits = np.array([alloc.limits[m] for m in alloc.metrics], dtype=np.float64)
    target = limits.copy()
    keep = alloc.channels.copy()
    factors: dict[str, tuple[str, tuple[int, ...]]] = {}
    solver = "milp"
    messages: list[str] = []
    value = 0.0
    n_rounds = 0
    for n_rounds in range(1, rounds + _TIGHTEN + 1):
        prog, layout = alloc.program(keep, factors)
        x = None
        if solver == "milp":
            left = time_limit - (time.perf_counter() - t0)
            x = alloc.solve_milp(prog, target, max(left / max(rounds + 1 - n_rounds, 2), 0.2))
            if x is None:
                solver = "greedy"
                messages.append(f"HiGHS found no solution ({alloc.last_status}): used the greedy Lagrangian heuristic")
                warnings.warn(
                    f"allocate: the integer program was not solved ({alloc.last_status}); using the greedy heuristic",
                    AllocatorFallbackWarning,
                    stacklevel=2,
                )
        if x is None:
            x = alloc.solve_greedy(prog, layout, target)
        new_keep, new_factors = alloc.decode(x, layout)
        new_factors = alloc.applied(new_keep, new_factors)
        value = float(prog.values @ x) + prog.const_value
        exact = space.costs.cost_of_keep(new_keep, new_factors)
        used = np.array([getattr(exact, m) for m in alloc.metrics], dtype=np.float64)
        converged = np.array_equal(new_keep, keep) and new_factors == factors
        keep, factors = new_keep, new_factors
        feasible = bool((used <= limits).all())
        if feasible and (converged or n_rounds >= rounds):
            break
        if not feasible and (converged or n_rounds >= rounds):
            # the linear model was optimistic here: tighten the violated limits by the exact overshoot
            target = np.where(used > limits, target * limits / used * 0.999, target)
            messages.append(f"round {n_rounds}: tightened {', '.join(np.array(alloc.metrics)[used > limits])}")
    plan = Plan(
        prune={
            g.id: (g.channels - int(k)) / g.channels for g, k in zip(space.groups, keep, strict=True) if k < g.channels
        },
        importance=space.importance,
        round_to=space.round_to,
        rank={name: r[1][0] for name, r in factors.items()},
    )
    plan = space.fit(plan, budget)  # grows a feasible plan to the budget; repairs a rare overshoot
    return Allocation(
        plan=plan,
        solver=solver,
        seconds=time.perf_counter() - t0,
        rounds=n_rounds,
        value=value,
        messages=messages,
    )
