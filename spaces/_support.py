"""What a support table checks: analytic cost equals measured cost, on plans the sampler proposes.

:func:`check_cost` is the one "analytic = measured" check the tests, the
benches and the support matrix share: ``space.cost(plan)`` (no model built)
against :func:`spaces.measure_cost` of ``space.apply(plan)`` (fvcore's count of
the built model), MACs, parameters and bytes.

:func:`support` makes one row of a support table from a built space:

* **groups**: the prunable groups of all groups. *All groups* are the
  dependency groups torch-pruning finds (one per set of coupled conv/linear
  output channels; the classifier's output layer and the caller's ignored
  layers are never roots), with each head-prunable attention's q/k/v group
  replaced by its head group; the space keeps the prunable ones and excludes
  the others with a reason (:attr:`spaces.ModelSpace.excluded`), counted here
  by kind (:func:`reason_kind`);
* **factorizable**: the conv/linear layers the space can factorize, of those
  the forward pass called;
* **heads**: attentions (modules with a ``num_heads``) whose heads the space
  prunes, of all of them; ``n/a`` without attention;
* **checks**: :func:`check_cost` on the sampler's most aggressive plan (every
  sampler parameter at its cheaper end: each group at ``max_ratio``, each
  factorizable layer at the lowest rank fraction) and on random plans drawn as
  the sampler draws them (every parameter uniform on its range and grid;
  every other plan with ranks, where the space has factorizable layers).

The plans go through the dimensions' own sampler mapping
(:meth:`spaces.dimensions.Sampled.params` and ``from_params``), the mapping
``search`` gives Optuna, with the study's ``[space]`` options.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spaces._errors import PruneTuneError, first_line
from spaces._plan import Plan
from spaces.cost._cost import Cost, measure_cost
from spaces.dimensions import ParamSpec, Sampled, with_role
from spaces.graph._attention import head_kind

if TYPE_CHECKING:
    from spaces._space import ModelSpace

__all__ = [
    "PlanCheck",
    "Support",
    "aggressive_plan",
    "check_cost",
    "check_plans",
    "cost_difference",
    "reason_kind",
    "sampled_plans",
    "support",
]

# the first words of the reasons spaces.graph._trace and spaces.graph._verify give for an excluded group -> a short kind
_REASON_KINDS = (
    ("touches grouped convolution", "grouped conv"),
    ("index mapping into", "non-uniform index mapping"),
    ("no pruning function", "no pruning function"),
    ("torch-pruning cannot map its channels", "torch-pruning cannot map it"),
    ("the pruned model fails", "pruned model fails"),
    ("pruning changes the output shape", "changes the output shape"),
    ("pruned channels are not the ones removed downstream", "wrong channels removed downstream"),
    ("pruning it changes the width of a product", "changes a product outside modules"),
)


def check_cost(space: ModelSpace, plan: Plan, example_inputs: Any = None) -> str | None:
    """None when ``space.cost(plan)`` equals what ``space.apply(plan)`` measures; else one line naming what differs.

    ``example_inputs`` defaults to the space's own. Errors of ``apply`` or of
    the measurement propagate (they are not a mismatch).
    """
    inputs = space.example_inputs if example_inputs is None else example_inputs
    analytic = space.cost(plan)
    measured = measure_cost(space.apply(plan), inputs)
    return cost_difference(analytic, measured)


def cost_difference(analytic: Cost, measured: Cost) -> str | None:
    """None when the two costs are equal; else ``"macs: analytic A, measured M; ..."`` for each figure that differs."""
    a, m = analytic.as_dict(), measured.as_dict()
    parts = [f"{key}: analytic {a[key]}, measured {m[key]}" for key in a if a[key] != m[key]]
    return "; ".join(parts) or None


@dataclass(frozen=True)
class PlanCheck:
    """One checked plan: its label, and None if its cost was exact, else the mismatch or the error in one line."""

    label: str
    plan: Plan
    problem: str | None

    @property
    def exact(self) -> bool:
        return self.problem is None


def _draw(spec: ParamSpec, rng: random.Random) -> float:
    """One value of ``spec`` as the sampler draws it: uniform on its grid, log-uniform, or uniform."""
    if spec.step:
        steps = round((spec.high - spec.low) / spec.step)
        return spec.low + spec.step * rng.randint(0, steps)
    if spec.log:
        return math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    return rng.uniform(spec.low, spec.high)


def _plan(space: ModelSpace, entries: Mapping[str, Any]) -> Plan:
    return Plan(importance=space.importance, round_to=space.round_to, **entries)


def _cost_key(cost: Cost) -> tuple[int, int, int]:
    return cost.macs, cost.bytes, cost.params


def aggressive_plan(space: ModelSpace, options: Mapping[str, Any]) -> Plan:
    """The sampler's most aggressive plan: per dimension, every parameter at the end (low or high) that costs less."""
    entries: dict[str, Any] = {}
    for dim in with_role(Sampled):
        specs = dim.params(space, options)
        if not specs:
            continue
        ends = [{unit: getattr(s, end) for unit, s in specs.items()} for end in ("low", "high")]
        tried = [{**entries, **dim.from_params(space, values, options)} for values in ends]
        entries = min(tried, key=lambda e: _cost_key(space.cost(_plan(space, e))))
    return _plan(space, entries)


def sampled_plans(space: ModelSpace, options: Mapping[str, Any], count: int, seed: int = 0) -> list[tuple[str, Plan]]:
    """``count`` labelled plans: the most aggressive one, then random ones (every other with ranks, if any).

    ``options`` are the study's ``[space]`` options (``max_ratio``, ``rank``,
    ``method``, ...); ranks are drawn only where ``options["rank"]`` is true.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1 (the most aggressive plan), got {count}")
    rng = random.Random(seed)
    out = [("most aggressive", aggressive_plan(space, options))]
    for i in range(1, count):
        with_ranks = bool(options.get("rank")) and i % 2 == 1
        opts = {**options, "rank": with_ranks}
        entries: dict[str, Any] = {}
        for dim in with_role(Sampled):
            specs = dim.params(space, opts)
            if specs:
                values = {unit: _draw(spec, rng) for unit, spec in specs.items()}
                entries.update(dim.from_params(space, values, opts))
        out.append((f"random {i}" + (" + ranks" if with_ranks and space.layers else ""), _plan(space, entries)))
    return out


def _problem(exc: Exception) -> str:
    kind = "refused" if isinstance(exc, PruneTuneError) else f"error: {type(exc).__name__}"
    return f"{kind}: {first_line(exc, '')}"


def check_plans(space: ModelSpace, options: Mapping[str, Any], count: int = 5, seed: int = 0) -> list[PlanCheck]:
    """:func:`check_cost` on :func:`sampled_plans`; an error while applying or measuring is the plan's problem."""
    checks = []
    for label, plan in sampled_plans(space, options, count, seed):
        try:
            problem = check_cost(space, plan)
        except Exception as exc:  # reported with the plan: a table row says what failed, and goes on
            problem = _problem(exc)
        checks.append(PlanCheck(label, plan, problem))
    return checks


def reason_kind(reason: str) -> str:
    """The kind of an excluded group's reason (``"grouped conv"``, ...); unknown reasons keep their first words."""
    for prefix, kind in _REASON_KINDS:
        if reason.startswith(prefix):
            return kind
    return " ".join(reason.split(":")[0].split()[:6])


@dataclass(frozen=True)
class Support:
    """One support-table row of a built space (see the module docs); :meth:`cells` formats it."""

    groups: int
    all_groups: int
    excluded: dict[str, int]  # reason kind -> groups
    factorizable: int
    layers: int
    heads_pruned: int
    attentions: int
    checks: tuple[PlanCheck, ...]

    CELLS = ("prunable groups", "excluded (reason: groups)", "factorizable layers", "heads pruned", "plans checked")

    @property
    def exact(self) -> int:
        return sum(c.exact for c in self.checks)

    @property
    def heads(self) -> str:
        """``yes (k of n)``, ``no (0 of n)`` or ``n/a`` (no attention)."""
        if not self.attentions:
            return "n/a"
        return f"{'yes' if self.heads_pruned else 'no'} ({self.heads_pruned} of {self.attentions})"

    @property
    def checked(self) -> str:
        """``5/5 exact``, or the count and the first plan that was not, with its problem."""
        text = f"{self.exact}/{len(self.checks)} exact"
        first = next((c for c in self.checks if not c.exact), None)
        return text if first is None else f"{text}; {first.label}: {first.problem}"

    def cells(self) -> list[str]:
        """The row's cells, in the order of :attr:`CELLS`."""
        excluded = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.excluded.items())) or "none"
        return [
            f"{self.groups} of {self.all_groups}",
            excluded,
            f"{self.factorizable} of {self.layers}",
            self.heads,
            self.checked,
        ]


def _attentions(space: ModelSpace) -> tuple[int, int]:
    """(head-pruned, all) attentions: modules with an integer ``num_heads`` and no such module inside them."""
    model = space.model
    named = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "num_heads", None), int)}
    inner = {n for n in named if not any(o.startswith(n + ".") for o in named)}
    pruned = {g.id for g in space.groups if g.id in inner and head_kind(named[g.id]) is not None}
    return len(pruned), len(inner)


def support(space: ModelSpace, options: Mapping[str, Any], count: int = 5, seed: int = 0) -> Support:
    """The support row of ``space``: its groups, exclusions, factorizable layers, heads, and ``count`` checked plans."""
    pruned, attentions = _attentions(space)
    excluded = Counter(reason_kind(r) for r in space.excluded.values())
    return Support(
        groups=len(space.groups),
        all_groups=len(space.groups) + len(space.excluded),
        excluded=dict(excluded),
        factorizable=len(space.layers),
        layers=len(space.layers) + len(space.not_factorizable),
        heads_pruned=pruned,
        attentions=attentions,
        checks=tuple(check_plans(space, options, count, seed)),
    )
