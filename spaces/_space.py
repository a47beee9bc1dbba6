"""``ModelSpace``: the compression space of one model — a small facade over the mechanism.

The parts, each in its own module:

* :mod:`spaces.graph._trace` — tracing (torch-pruning ``DependencyGraph``): channel
  groups with stable ids, factorizable layers, the classifier, excluded groups;
* :mod:`spaces.cost._costmodel` — :class:`~spaces.CostModel`, the analytic cost of
  any plan (no model built) and the plan arithmetic (kept counts, ranks);
* :mod:`spaces.policy._importance` — channel importance and singular-value energy;
* :mod:`spaces.graph._surgery` — applying a plan to a copy (prune, then factorize);
* :mod:`spaces.graph._verify` — the self-check that excludes what the library would
  get wrong, so a wrong index mapping can never produce a wrong model.

Choosing plans is policy, apart from all this: :func:`spaces.uniform_plan`,
:func:`spaces.global_plan` and :func:`spaces.fit` (``_policy.py``) and the
allocator :func:`spaces.allocate` (``_allocate.py``) use only the public
interface below; the methods of the same names here are shortcuts to them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from spaces._errors import UnsupportedModelError
from spaces._lowrank import LayerGeom
from spaces._plan import IMPORTANCES, Plan
from spaces.cost._cost import Cost, as_tuple, measure_cost
from spaces.cost._costmodel import CostModel, Ranks
from spaces.cost._latency import DeviceProfile
from spaces.dimensions import dimension
from spaces.dimensions._prune import stages
from spaces.graph._surgery import Surgery
from spaces.graph._trace import Group, resolve_ignored, trace
from spaces.graph._verify import verify as _verify
from spaces.policy._allocate import Allocation, allocate
from spaces.policy._budget import Budget
from spaces.policy._importance import ImportanceScores
from spaces.policy._policy import fit, global_plan, uniform_plan
from spaces.policy._sensitivity import SENSITIVITY_RATIOS, Sensitivity, measure_sensitivity

__all__ = ["ModelSpace"]


class ModelSpace:
    """What can change in a model: its channel groups and factorizable layers, and what plans cost.

    Args:
        model: the model; it is deep-copied and never modified.
        example_inputs: a tensor or a tuple of tensors the model is called with;
            costs are counted for exactly this input (batch included).
        ignored_layers: names (or modules) of layers whose output channels are
            never pruned; the classifier's output layer is always added.
        importance: which channels a group keeps (see :mod:`spaces.policy._importance`):
            ``"l1"`` (default: the summed L1 norm of each channel's filters over
            the group's producing conv/linear layers), ``"l2"``, ``"bn_scale"``;
            torch-pruning's group estimators ``"group_l1"``, ``"group_l2"``,
            ``"lamp"`` (producers, consumers' input slices and BatchNorm); and
            the data-aware ``"taylor"`` and ``"hessian"``, usable once
            :meth:`calibrate_importance` (or :meth:`load_importance`) ran.
        round_to: kept channel counts are rounded to a multiple of this.
        verify: check the space on construction (see :mod:`spaces.graph._verify`).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        ignored_layers: Iterable[str | nn.Module] = (),
        importance: str = "l1",
        round_to: int = 1,
        verify: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
        if type(model).__module__.startswith("transformers.") and hasattr(model, "get_output_embeddings"):
            # the channel tracer does not finish on a decoder's residual stream and rotary embeddings
            raise UnsupportedModelError(
                f"{type(model).__name__} is a transformers language model: its plans are built and costed by "
                "spaces.decoder (layouts, exact costs, surgery); the search does not take language models yet"
            )
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
        self.example_inputs = as_tuple(example_inputs)
        self.importance = importance
        self.round_to = round_to
        self.profile: DeviceProfile | None = None  # the device profile latency is predicted from (attach_profile)
        ignored = resolve_ignored(model, ignored_layers)
        self._trace = trace(copy.deepcopy(model).eval(), self.example_inputs, ignored)
        self.costs = CostModel(self._trace, importance=importance, round_to=round_to)
        self.scores = ImportanceScores(self._trace)
        self._surgery = Surgery(self._trace, self.costs, self.scores)
        if verify:
            _verify(self._trace, self.costs, self.scores, self._surgery)

    # ------------------------------------------------------------ what the space holds
    @property
    def model(self) -> nn.Module:
        """The space's own copy of the model (do not modify it; :meth:`apply` returns new models)."""
        return self._trace.model

    @property
    def groups(self) -> tuple[Group, ...]:
        return self.costs.groups

    def group(self, gid: str) -> Group:
        return self.costs.groups[self.costs.group_index(gid)]

    @property
    def excluded(self) -> dict[str, str]:
        """Groups left out of the space, with the reason (:mod:`spaces.graph._trace`, :mod:`spaces.graph._verify`)."""
        return self._trace.excluded

    @property
    def ignored_layers(self) -> tuple[str, ...]:
        """Layers whose outputs are never pruned: the classifier and the caller's ``ignored_layers``."""
        return self._trace.ignored_layers

    @property
    def layers(self) -> tuple[LayerGeom, ...]:
        """The factorizable layers, unpruned (see :class:`spaces.LayerGeom`)."""
        return tuple(self._trace.geoms.values())

    def layer(self, name: str) -> LayerGeom:
        return self.costs.layer(name)

    @property
    def not_factorizable(self) -> dict[str, str]:
        """Conv/linear layers that cannot be factorized, with the reason."""
        return self._trace.not_factorizable

    @property
    def base_cost(self) -> Cost:
        return self.costs.base_cost

    def measure_base_cost(self) -> Cost:
        """The base model's cost as fvcore measures it."""
        return measure_cost(self.model, self.example_inputs)

    def macs_share(self, gid: str) -> float:
        """Share of the base MACs in layers whose size depends on group ``gid``."""
        return self.costs.macs_share(gid)

    # ------------------------------------------------------------ plans
    def allowed_keeps(self, group: Group, round_to: int | None = None) -> np.ndarray:
        """The channel counts a group may keep under ``round_to`` (ascending)."""
        return self.costs.allowed_keeps(group, round_to)

    def keep_counts(self, plan: Plan) -> np.ndarray:
        """Channels each group keeps under ``plan`` (validates the plan)."""
        return self.costs.keep_counts(plan)

    def plan_from_keep(self, keep: Any, *, like: Plan | None = None) -> Plan:
        """The plan that keeps exactly ``keep[i]`` channels of group ``i``."""
        return self.costs.plan_from_keep(keep, like=like)

    def resolved_ranks(self, plan: Plan) -> Ranks:
        """Per factorized layer of ``plan``: (method, ranks) on its pruned shape.

        A layer whose rank is at or above its break-even rank stays dense (exactly
        the original layer) and is absent (see :meth:`spaces.LayerGeom.factor_ranks`).
        """
        keep = self.keep_counts(plan)
        return dict(dimension("rank").resolve(self.costs, plan, keep) or {})

    def validate(self, plan: Plan) -> Plan:
        """Raise :class:`PlanError` if ``plan`` does not fit this space; return it."""
        self.costs.resolve(plan, self.keep_counts(plan))
        return plan

    def cost(self, plan: Plan) -> Cost:
        """The analytic cost of ``apply(plan)``: no model is built (``latency``: with a device profile)."""
        return self.costs.cost(plan)

    def attach_profile(self, profile: DeviceProfile) -> None:
        """Predict latency from ``profile`` from now on: :meth:`cost` (and ``fit``, the allocator) then give
        the :attr:`Cost.latency` of every plan it can predict (pruning, and ranks of the methods it timed), so a
        budget may limit it (see :mod:`spaces.cost._latency`)."""
        from spaces.cost._latency import LatencyPredictor

        self.profile = profile
        self.costs.latency_of = LatencyPredictor(self, profile)
        self.costs.base_cost = self.costs.cost_resolved(self.costs.channels, {})

    def set_round_to(self, round_to: int) -> None:
        """Round kept counts to multiples of ``round_to`` from now on (``round_to = "auto"``: the profile's)."""
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
        self.round_to = self.costs.round_to = round_to

    # ------------------------------------------------------------ surgery
    def apply(self, plan: Plan, *, model: nn.Module | None = None) -> nn.Module:
        """A new model with ``plan`` applied; the space's model is untouched.

        ``model``: another copy of the same architecture (e.g. with other
        weights) to apply the plan to instead; it is copied, not modified.
        """
        return self._surgery.apply(copy.deepcopy(self.model if model is None else model), plan)

    def masked_model(self, plan: Plan, *, model: nn.Module | None = None) -> nn.Module:
        """The base model (or a copy of ``model``) with the channels ``plan`` removes set to output zero.

        For groups without channel-mixing normalisation (LayerNorm/GroupNorm),
        ``masked_model(plan)`` computes what ``apply(plan)`` computes.
        """
        return self._surgery.mask(copy.deepcopy(self.model if model is None else model), plan)

    def energy(self, layer: str) -> np.ndarray:
        """Cumulative share of squared singular values of ``layer``'s (unpruned) kernel."""
        return self.scores.energy(layer)

    def kept_energy(self, layer: str, method: str, ranks: Iterable[int], geom: LayerGeom | None = None) -> np.ndarray:
        """The share of ``layer``'s kernel ``method`` keeps at each int rank on ``geom`` (its pruned shape;
        default: unpruned) (see :meth:`ImportanceScores.kept`)."""
        return self.scores.kept(layer, method, ranks, geom)

    def stages(self) -> dict[str, list[str]]:
        """The groups by the resolution their outputs are computed at (``stage1``, ...; see ``sample_by``)."""
        return stages(self)

    def calibrate_importance(self, criterion: str, batches: Iterable[Any]) -> dict[str, np.ndarray]:
        """Compute a data-aware criterion (``"taylor"``, ``"hessian"``) on ``(inputs, labels)`` batches.

        The space's model is unchanged. Returns the scores per group id, to cache
        and give back to :meth:`load_importance` (see :meth:`ImportanceScores.calibrate`).
        """
        return self.scores.calibrate(criterion, batches)

    def load_importance(self, criterion: str, scores: Mapping[str, np.ndarray]) -> None:
        """Use cached scores of a data-aware criterion (what :meth:`calibrate_importance` returned)."""
        self.scores.load(criterion, scores)

    # ------------------------------------------------------------ policies (shortcuts)
    def uniform_plan(self, ratio: float) -> Plan:
        """See :func:`spaces.uniform_plan`."""
        return uniform_plan(self, ratio)

    def global_plan(self, budget: Budget, *, max_ratio: float = 0.95) -> Plan:
        """See :func:`spaces.global_plan`."""
        return global_plan(self, budget, max_ratio=max_ratio)

    def fit(self, plan: Plan, budget: Budget) -> Plan:
        """See :func:`spaces.fit`."""
        return fit(self, plan, budget)

    def allocate(
        self,
        budget: Budget,
        *,
        prune: bool = True,
        rank: bool = True,
        time_limit: float = 10.0,
        method: str = "svd",
        sensitivity: Sensitivity | None = None,
        **more: bool,
    ) -> Allocation:
        """The COBLA-style allocator's result (see :func:`spaces.allocate`); its plan is ``.plan``."""
        return allocate(
            self, budget, prune=prune, rank=rank, time_limit=time_limit, method=method, sensitivity=sensitivity, **more
        )

    def sensitivity(
        self,
        score: Callable[[nn.Module], float],
        ratios: Sequence[float] = SENSITIVITY_RATIOS,
        options: Mapping[str, Any] | None = None,
    ) -> Sensitivity:
        """See :func:`spaces.measure_sensitivity`."""
        return measure_sensitivity(self, score, ratios, options)

    def __repr__(self) -> str:
        return (
            f"ModelSpace({type(self.model).__name__}, groups={len(self.groups)}, "
            f"excluded={len(self.excluded)}, base={self.base_cost})"
        )
