"""The contract of a plan dimension: one class says everything PruneTune needs to know about it.

A *dimension* is one kind of change a :class:`~spaces.Plan` can ask for:
channel pruning (``prune``), low-rank factorization (``rank`` with
``method``), per-layer bit widths (``bits``), and whatever a plug-in adds.
Every part of PruneTune that handles plans iterates over the registered
dimensions (:mod:`spaces.dimensions._registry`) instead of naming them, so a
new dimension is one module with one :class:`Dimension` subclass plus one
:func:`~spaces.dimensions.register_dimension` line (or an entry point in the
group ``prunetune.dimensions``).

What a dimension implements, and who calls it:

* **Plan keys, validation and JSON** (:class:`~spaces.Plan`, torch-free):
  :attr:`Dimension.key` and :attr:`Dimension.extra_keys` are the plan's JSON
  keys it owns, :meth:`Dimension.normalize` validates their values (one-line
  :class:`~spaces.PlanError` / :class:`~spaces.InputTypeError`) and returns
  them canonical (defaults dropped), :meth:`Dimension.to_json` says which keys
  are written. A plan that does not use a dimension writes none of its keys,
  so adding a dimension never changes the JSON or the hash of an older plan.
* **Resolution on the pruned shape** (:meth:`Dimension.resolve`): pruning is
  the first dimension; what every later dimension asks for is resolved on the
  shapes it leaves (``keep``: the channels each group keeps). ``None`` means
  "nothing to do for this plan".
* **Exact cost** (:meth:`Dimension.add_cost`): the cost model starts from the
  dense model at the kept channels (its polynomial) and lets each dimension,
  in :attr:`Dimension.order`, change the running :class:`CostState`.
* **Surgery** (:meth:`Dimension.apply`): the same order, on a copy of the model;
  :meth:`Dimension.verify_probe` gives the space's self-check a plan to build
  and compare with the analytic cost.
* **``fit``** (:attr:`Dimension.fit_rule`): ``fit`` moves the pruning onto a
  budget; every other dimension is *held* (resolved again on each pruned shape
  the search for the budget visits). A dimension may instead offer a cheaper
  variant of the plan for ``fit`` to start from (:meth:`Dimension.relax`).
* **Options** (:attr:`Dimension.options`): a pydantic model, read from the
  config's ``[space.<key>]`` table; the table present turns the dimension on.

That is the whole core (at most eight methods, four of them abstract). The
rest is opt-in roles (:mod:`spaces.dimensions._roles`) that a dimension
subclasses and that their consumers ask for: :class:`~spaces.dimensions.Sampled`
(the sampler's parameters and their round trip), :class:`~spaces.dimensions.Allocated`
(the allocator's 0-1 program), :class:`~spaces.dimensions.Measured` (the
sensitivity table's plans) and :class:`~spaces.dimensions.Reported` (the
tables' phrase, the structure rows, the export's notes). A dimension with the
core alone is costed, built, verified and fitted; the consumers of the roles
it does not play skip it and say so once.

Methods are called on one shared instance per process: implementations keep
no per-plan state. ``space`` arguments are :class:`~spaces.ModelSpace` s,
``costs`` their :class:`~spaces.CostModel`, ``surgery`` their surgery; ``keep``
is a numpy array of kept channels per group, in the space's group order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from spaces._errors import InputTypeError
from spaces.cost._cost import Cost

if TYPE_CHECKING:
    import numpy as np
    from pydantic import BaseModel
    from torch import nn

    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces.cost._costmodel import CostModel
    from spaces.graph._surgery import Surgery

__all__ = ["AllocPoint", "Block", "CostState", "Dimension", "ParamSpec", "StructureRow", "check_mapping"]

Entries = dict[str, Mapping[str, Any]]  # plan JSON key -> its (canonical) mapping


@dataclass(frozen=True)
class ParamSpec:
    """One sampler parameter: a float in ``[low, high]``, on a grid of ``step`` or log-uniform if ``log``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False


@dataclass(frozen=True)
class StructureRow:
    """What a plan keeps of one unit (a group's channels, a layer's rank, ...): ``kept`` of ``total``."""

    what: str  # the panel's label, e.g. "kept channels"
    unit: str  # a group id or a layer name
    kept: int
    total: int

    @property
    def fraction(self) -> float:
        return min(self.kept / self.total, 1.0) if self.total else 1.0


@dataclass
class CostState:
    """A plan's cost while the dimensions add their terms (see :meth:`Dimension.add_cost`).

    ``weights`` records, for each conv/linear layer an earlier dimension has
    changed, its weight parameters now (a factorized layer's factor chain), so
    that a later dimension (bits) costs the layer as it will be built.
    """

    macs: int
    params: int
    bytes: int
    weights: dict[str, int] = field(default_factory=dict)

    def cost(self) -> Cost:
        return Cost(macs=self.macs, params=self.params, bytes=self.bytes)


@dataclass
class Block:
    """One unit's variables in the allocator's 0-1 program (a group's channel blocks, a layer's ranks, ...).

    The unit takes an ordered chain of steps (step ``i + 1`` only after step
    ``i``): ``values[i]`` and ``costs[i]`` (one entry per budget metric, linear
    around the current point) are what step ``i`` adds. ``base_value`` and
    ``base_cost`` are what the unit is worth and adds to the current point's
    cost with no step taken (the cost relative to the point: a unit that is
    replaced removes its current cost here). With ``alternative`` (a value and
    a cost) the unit takes exactly one of the alternative or the chain's first
    step (a layer: dense, or factorized at some rank); ``forced`` leaves only
    the alternative.
    """

    unit: str
    values: list[float] = field(default_factory=list)
    costs: list[np.ndarray] = field(default_factory=list)
    base_value: float = 0.0
    base_cost: np.ndarray | None = None
    alternative: tuple[float, np.ndarray] | None = None
    forced: bool = False


@dataclass
class AllocPoint:
    """Where the allocator's linear model is taken: the kept channels and each dimension's resolved part.

    ``metrics`` are the budget's limited metrics (the order of every cost
    vector), ``options`` the caller's (``prune``, ``rank``, ``method``,
    ``blocks``, ...), ``cache`` what a dimension computes once per allocation
    (keyed by its key).
    """

    keep: np.ndarray
    resolved: dict[str, Any]
    metrics: tuple[str, ...]
    options: Mapping[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)

    def vector(self, cost: Cost) -> np.ndarray:
        """``cost`` as a vector over :attr:`metrics`."""
        import numpy as np

        return np.array([getattr(cost, m) for m in self.metrics], dtype=np.float64)


class Dimension(ABC):
    """One kind of change a plan can ask for (see the module docs for the whole contract)."""

    key: ClassVar[str]  # the plan's JSON key, and the dimension's name in the registry
    extra_keys: ClassVar[tuple[str, ...]] = ()  # further JSON keys it owns (rank: "method")
    describe: ClassVar[dict[str, str]] = {}  # key -> what its JSON object maps ("group id to ratio")
    order: ClassVar[int]  # costing and surgery order: prune 0, rank 10, ...
    always_written: ClassVar[bool] = False  # write ``key`` even when empty (prune: the plan's format)
    fit_rule: ClassVar[str] = "held"  # "moved" (pruning) or "held": see the module docs
    # its resolved part is {layer: (method, ranks)}, which device profiles time as factor chains (spaces.cost._latency)
    factor_chains: ClassVar[bool] = False
    # its typed options (a pydantic model), read from the config's [space.<key>] table; a table present turns the
    # dimension on, and the sampler's options then hold the validated model under ``key`` (None: no table)
    options: ClassVar[type[BaseModel] | None] = None
    # relations, declared once and checked by spaces.dimensions.check_relations wherever dimensions are combined
    # (a config's [space], the allocator): the keys it needs on, and the keys it cannot be searched with (-> why)
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[dict[str, str]] = {}

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.extra_keys)

    # ------------------------------------------------------------ plan JSON (torch-free)
    @abstractmethod
    def normalize(self, values: Entries) -> Entries:
        """Validate the raw mappings of this dimension's keys (every key present, ``{}`` if absent).

        Returns the canonical mappings (sorted by the plan, defaults dropped);
        raises one-line :class:`~spaces.PlanError` / :class:`~spaces.InputTypeError`.
        """

    def to_json(self, values: Entries) -> dict[str, Any]:
        """The JSON keys a plan writes for this dimension (only non-empty ones unless ``always_written``)."""
        return {k: dict(v) for k, v in values.items() if v or (k == self.key and self.always_written)}

    def is_empty(self, values: Entries) -> bool:
        return not values.get(self.key)

    # ------------------------------------------------------------ against a space
    @abstractmethod
    def resolve(self, costs: CostModel, plan: Plan, keep: np.ndarray) -> Any | None:
        """This dimension's part of ``plan``, validated against the space and resolved on ``keep``; None: nothing."""

    @abstractmethod
    def add_cost(self, costs: CostModel, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        """Change ``state`` by what ``resolved`` does to the model (exactly what :meth:`apply` builds)."""

    @abstractmethod
    def apply(self, surgery: Surgery, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        """Change ``model`` (a copy of the traced model, earlier dimensions applied) in place."""

    def verify_probe(self, costs: CostModel) -> Entries:
        """Plan entries that exercise this dimension, for the space's self-check (none by default).

        When a space is built, the probe (on top of a half-pruned plan) is
        applied and the model's parameters and bytes compared with the cost
        model's (:mod:`spaces.graph._verify`).
        """
        return {}

    def relax(self, space: ModelSpace, plan: Plan) -> Plan:
        """A plan for ``fit`` to start from when moving ``plan`` onto a budget; by default ``plan`` itself."""
        return plan


def check_mapping(dim: Dimension, key: str, value: Any, *, source: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else a one-line :class:`~spaces.InputTypeError` naming ``key``."""
    if value is None and source == "python":  # an omitted keyword argument
        return {}
    if isinstance(value, Mapping):
        return value
    what = dim.describe.get(key, "names to values")
    if source == "json":
        raise InputTypeError(
            f"plan key {key!r} must be a JSON object mapping {what}, got {type(value).__name__} {value!r}"
        )
    raise InputTypeError(f"Plan.{key} must be a mapping of {what}, got {type(value).__name__}")
