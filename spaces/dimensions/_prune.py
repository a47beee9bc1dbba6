"""Structured channel pruning as a plan dimension: ``prune = {group id: ratio}``.

Pruning is the first dimension: the channels each group keeps (``keep``) are
the shapes every later dimension is resolved, costed and applied on. Its cost
is the cost model's polynomial in the kept channels (the state every plan's
costing starts from), so :meth:`PruneDimension.add_cost` adds nothing; its
surgery removes the channels (:meth:`spaces._surgery.Surgery.remove_channels`).
It is the dimension ``fit`` moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from spaces._errors import InputTypeError, PlanError
from spaces.dimensions._base import CostState, Dimension, Entries, ParamSpec, StructureRow

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spaces._costmodel import CostModel
    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces._surgery import Surgery

__all__ = ["PruneDimension"]


class PruneDimension(Dimension):
    key = "prune"
    describe: ClassVar[dict[str, str]] = {"prune": "group id to ratio"}
    order = 0
    always_written = True
    fit_rule = "moved"

    def normalize(self, values: Entries) -> Entries:
        clean: dict[str, float] = {}
        for gid, ratio in values["prune"].items():
            if not isinstance(gid, str):
                raise InputTypeError(f"Plan.prune keys must be group ids (str), got {gid!r}")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
                raise InputTypeError(f"prune ratio of group {gid!r} must be a number, got {ratio!r}")
            r = float(ratio)
            if not (0.0 <= r < 1.0) or math.isnan(r):
                raise PlanError(f"prune ratio of group {gid!r} must be in [0, 1), got {ratio!r}")
            if r > 0.0:
                clean[gid] = r
        return {"prune": clean}

    def resolve(self, costs: CostModel, plan: Plan, keep: np.ndarray) -> Any | None:
        """``(criterion, keep)``: how channels are ranked and how many each group keeps (validated already)."""
        return (plan.importance or costs.importance, keep) if plan.prune else None

    def add_cost(self, costs: CostModel, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        """Nothing to add: the state starts from the polynomial at ``keep``."""

    def apply(self, surgery: Surgery, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        surgery.remove_channels(model, resolved)

    # ------------------------------------------------------------ the sampler
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """Every group's prune ratio, uniform on ``[0, max_ratio]``."""
        high = float(options.get("max_ratio", 0.9))
        return {g.id: ParamSpec(0.0, high) for g in space.groups}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        channels = {g.id: g.channels for g in space.groups}
        # keep at least one channel of small groups
        return {"prune": {gid: min(float(v), (channels[gid] - 1) / channels[gid]) for gid, v in values.items()}}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        return {gid: min(float(plan.prune.get(gid, 0.0)), spec.high) for gid, spec in specs.items()}

    # ------------------------------------------------------------ the report
    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        keep = space.keep_counts(plan)
        return [
            StructureRow("kept channels", g.id, int(k), g.channels) for g, k in zip(space.groups, keep, strict=True)
        ]
