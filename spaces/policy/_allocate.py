"""The COBLA-style allocator: which channels and singular values to keep under a budget.

Formulation (a 0-1 integer program, solved with ``scipy.optimize.milp``/HiGHS).
Each plan dimension brings its own variables (:meth:`spaces.dimensions.Allocated.allocator_blocks`:
ordered chains of steps, optionally with an exclusive alternative); the
program below is what the built-in dimensions bring:

* **Channel blocks.** Each group's channels, sorted by importance (the space's
  criterion, on the original weights), are cut into at most ``blocks`` blocks
  at the group's allowed keep counts (``round_to``). ``z[g, b] = 1`` keeps
  block ``b``; blocks are kept in order (``z[g, b+1] <= z[g, b]``); the first
  block (the smallest allowed count) is always kept. Value of a block: its
  share of the group's total importance, so every group is worth 1 when whole;
  or, given a measured :class:`spaces.Sensitivity`, the loss rise it avoids
  (:mod:`spaces.policy._sensitivity`).
* **Singular values.** Each factorizable layer either stays dense (``d[l] = 1``,
  value 1) or is factorized by the study's method (SVD by default; any method
  of :mod:`spaces.factorization`) with rank ``R[l, b]`` when its first ``b``
  rank blocks are kept (``x[l, b]``, in order, ``x[l, 1] + d[l] = 1``). Value of
  a rank block: its share of the layer's squared singular values (energy; for
  ``tucker2``/``tt`` the same SVD energy of the reshaped kernel, a proxy; versatile
  filters value the share their reconstruction keeps).
  Ranks go up to one below the layer's break-even rank (a rank at or above
  it keeps the layer dense: :meth:`spaces.LayerGeom.factor_ranks`), so
  factorizing always saves and every rank is costed as the plan applies it.
* **Bits** (``allocate(..., bits=True)``, :mod:`spaces.dimensions._bits`):
  each quantizable layer is at 4 bits and may step to 8; the step costs the
  bytes it adds at the current pruned shape and is worth the loss rise it
  avoids (measured with the layer alone at 4 and at 8 bits), or the relative
  weight error it removes. Bits and ranks are not offered together.
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
from typing import TYPE_CHECKING, Any

import numpy as np

from spaces._errors import PlanError
from spaces._plan import Plan
from spaces.dimensions import Allocated, AllocPoint, Block, check_relations, with_role
from spaces.policy._budget import Budget

if TYPE_CHECKING:
    from spaces._space import ModelSpace
    from spaces.policy._sensitivity import Sensitivity

__all__ = ["Allocation", "AllocatorFallbackWarning", "allocate", "chain_levels"]

_TIGHTEN = 6  # extra rounds allowed for tightening violated limits


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


def chain_levels(allowed: np.ndarray, blocks: int) -> np.ndarray:
    """At most ``blocks + 1`` of the ``allowed`` values (ascending), evenly spread, both ends included."""
    idx = np.unique(np.linspace(0, len(allowed) - 1, min(blocks, len(allowed) - 1) + 1).round().astype(int))
    return allowed[idx]


@dataclass(frozen=True)
class _Span:
    """Where one block's variables sit in the program: its alternative (if any) and its chain."""

    alt: int | None
    first: int
    end: int
    forced: bool

    def vector(self, x: np.ndarray, state: int) -> None:
        """Set ``x`` for ``state``: -1 takes the alternative, k >= 0 the first k chain steps."""
        if state < 0 and self.alt is not None:
            x[self.alt] = 1.0
        else:
            x[self.first : self.first + state] = 1.0

    def choice(self, x: np.ndarray) -> tuple[bool, int]:
        return self.alt is not None and x[self.alt] > 0.5, round(float(x[self.first : self.end].sum()))


@dataclass
class _Program:
    """The linear model around one point."""

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


def _program(blocks: list[Block], at: np.ndarray) -> tuple[_Program, list[_Span]]:
    """The 0-1 program of ``blocks`` around a point whose exact cost is ``at``."""
    values: list[float] = []
    costs: list[np.ndarray] = []
    lb: list[float] = []
    order: list[tuple[int, int]] = []
    onehot: list[tuple[int, int]] = []
    spans: list[_Span] = []
    const, const_value = at.copy(), 0.0
    for b in blocks:
        if b.base_cost is not None:
            const += b.base_cost
        const_value += b.base_value
        alt = None
        if b.alternative is not None:
            alt = len(values)
            values.append(b.alternative[0])
            costs.append(b.alternative[1])
            lb.append(1.0 if b.forced else 0.0)
        first = len(values)
        for i, (v, c) in enumerate(zip(b.values, b.costs, strict=True)):
            values.append(v)
            costs.append(c)
            lb.append(0.0)
            if i > 0:
                order.append((len(values) - 1, len(values) - 2))
            elif alt is not None:
                onehot.append((alt, first))
        spans.append(_Span(alt, first, len(values), b.forced))
    prog = _Program(
        values=np.array(values),
        costs=np.array(costs).T.reshape(len(at), -1),
        const=const,
        const_value=const_value,
        lb=np.array(lb),
        ub=np.ones(len(values)),
        order=order,
        onehot=onehot,
    )
    return prog, spans


class _Allocator:
    """The program's dimensions and budget, the solvers, and the decoding of a solution."""

    def __init__(self, space: ModelSpace, budget: Budget, prune: bool, rank: bool, blocks: int, **options: Any) -> None:
        self.space = space
        self.limits = budget.absolute(space.base_cost)
        self.metrics = tuple(self.limits)
        self.options = {"prune": prune, "rank": rank, "blocks": blocks, "method": "svd", **options}
        self.channels = np.array([g.channels for g in space.groups], dtype=np.int64)
        self.cache: dict[str, Any] = {}
        self.last_status = "not run"
        self.owners: list[tuple[Allocated, int]] = []  # per program: each dimension and its number of blocks

    def start(self) -> AllocPoint:
        """The unpruned, dense point."""
        return AllocPoint(self.channels.copy(), {}, self.metrics, self.options, self.cache)

    def program(self, point: AllocPoint) -> tuple[_Program, list[_Span]]:
        """Every dimension's blocks around ``point``, as one program."""
        blocks: list[Block] = []
        self.owners = []
        for dim in with_role(Allocated):
            mine = dim.allocator_blocks(self.space, point)
            self.owners.append((dim, len(mine)))
            blocks += mine
        at = point.vector(self.space.costs.cost_resolved(point.keep, point.resolved))
        return _program(blocks, at)

    def decode(self, x: np.ndarray, spans: list[_Span]) -> AllocPoint:
        """The point the solution ``x`` of the last :meth:`program` stands for."""
        point = self.start()
        start = 0
        for dim, n in self.owners:
            dim.allocator_decode(self.space, point, [s.choice(x) for s in spans[start : start + n]])
            start += n
        return point

    def plan(self, point: AllocPoint) -> Plan:
        entries: dict[str, Any] = {}
        for dim in with_role(Allocated):
            entries.update(dim.allocator_entries(self.space, point))
        return Plan(importance=self.space.importance, round_to=self.space.round_to, **entries)

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

    def solve_greedy(self, prog: _Program, spans: list[_Span], limits: np.ndarray) -> np.ndarray:
        """Lagrangian greedy: from everything kept (and every alternative taken), repeatedly make the move
        that loses the least value per unit of (overshoot-weighted) cost saved, until the linear model fits.

        A block's state: -1 (its alternative), else the chain steps kept; a move takes one step back, or
        leaves the alternative for the whole chain."""
        state = [-1 if s.alt is not None else s.end - s.first for s in spans]

        def vector(st: list[int]) -> np.ndarray:
            x = np.zeros(len(prog.values))
            for span, k in zip(spans, st, strict=True):
                span.vector(x, k)
            return x

        def move(span: _Span, k: int) -> int | None:
            if k < 0:
                return None if span.forced or span.end == span.first else span.end - span.first
            return k - 1 if k > (1 if span.alt is not None else 0) else None

        x = vector(state)
        for _ in range(sum(s.end - (s.first if s.alt is None else s.alt) + 1 for s in spans) + 1):
            over = (prog.costs @ x + prog.const - limits) / np.maximum(limits, 1.0)
            if (over <= 0).all():
                break
            lam = np.maximum(over, 0.0)
            best: tuple[float, list[int], np.ndarray] | None = None
            for i, (span, k) in enumerate(zip(spans, state, strict=True)):
                nk = move(span, k)
                if nk is None:
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


def _check_arguments(budget: Budget, prune: bool, held: bool) -> None:
    """Something to allocate, a real budget, and no latency limit beside ranks or bits (the integer program
    linearises the predicted latency of channels; a factor chain's is read from its measured table, which the
    blocks do not carry, and bits are not profiled)."""
    if not (prune or held):
        raise ValueError("allocate needs prune=True, rank=True or both")
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a spaces.Budget, got {type(budget).__name__}")
    if "latency" in budget.limits and held:
        raise PlanError(
            "the allocator meets budget latency by pruning alone: allocate it with rank=False and no other "
            "dimension (then fit a plan with ranks onto it), or use a MACs or params budget"
        )


def allocate(
    space: ModelSpace,
    budget: Budget,
    *,
    prune: bool = True,
    rank: bool = True,
    time_limit: float = 10.0,
    rounds: int = 4,
    blocks: int = 16,
    method: str = "svd",
    sensitivity: Sensitivity | None = None,
    **more: bool,
) -> Allocation:
    """Solve the allocation program (see the module docs); returns the plan and how it went.

    ``method``: the factorization method of the rank variables; ``sensitivity``:
    value the channel blocks by measured loss rises instead of importance shares
    (:func:`spaces.measure_sensitivity`); ``more``: other registered dimensions
    to include by key (``bits=True``).
    """
    _check_arguments(budget, prune, rank or any(more.values()))
    check_relations([k for k, on in {"prune": prune, "rank": rank, **more}.items() if on], where="allocate")
    t0 = time.perf_counter()
    alloc = _Allocator(space, budget, prune, rank, blocks, method=method, sensitivity=sensitivity, **more)
    limits = np.array([alloc.limits[m] for m in alloc.metrics], dtype=np.float64)
    target = limits.copy()
    point = alloc.start()
    solver, messages, value, n_rounds = "milp", [], 0.0, 0
    for n_rounds in range(1, rounds + _TIGHTEN + 1):
        prog, spans = alloc.program(point)
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
            x = alloc.solve_greedy(prog, spans, target)
        new = alloc.decode(x, spans)
        value = float(prog.values @ x) + prog.const_value
        used = new.vector(space.costs.cost_resolved(new.keep, new.resolved))
        converged = np.array_equal(new.keep, point.keep) and new.resolved == point.resolved
        point = new
        feasible = bool((used <= limits).all())
        if converged or n_rounds >= rounds:
            if feasible:
                break
            # the linear model was optimistic here: tighten the violated limits by the exact overshoot
            target = np.where(used > limits, target * limits / used * 0.999, target)
            messages.append(f"round {n_rounds}: tightened {', '.join(np.array(alloc.metrics)[used > limits])}")
    plan = space.fit(alloc.plan(point), budget)  # grows a feasible plan to the budget; repairs a rare overshoot
    return Allocation(plan, solver, time.perf_counter() - t0, n_rounds, value, messages)
