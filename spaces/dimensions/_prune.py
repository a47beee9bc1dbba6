"""Structured channel pruning as a plan dimension: ``prune = {group id: ratio}``.

Pruning is the first dimension: the channels each group keeps (``keep``) are
the shapes every later dimension is resolved, costed and applied on. Its cost
is the cost model's polynomial in the kept channels (the state every plan's
costing starts from), so :meth:`PruneDimension.add_cost` adds nothing; its
surgery removes the channels (:meth:`spaces.graph._surgery.Surgery.remove_channels`).
It is the dimension ``fit`` moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from spaces._errors import InputTypeError, PlanError
from spaces.dimensions._base import AllocPoint, Block, CostState, Dimension, Entries, ParamSpec, StructureRow
from spaces.dimensions._roles import Allocated, Reported, Sampled

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces.cost._costmodel import CostModel
    from spaces.graph._surgery import Surgery

__all__ = ["PruneDimension", "PruneOptions", "stages"]


class PruneOptions(BaseModel):
    """Channel pruning, always on: how the sampler proposes prune ratios."""

    model_config = ConfigDict(extra="forbid")
    max_ratio: float = Field(0.8, gt=0, lt=1, description="largest prune ratio the sampler proposes per group")
    sample_by: Literal["groups", "stages", "blend"] = Field(
        "groups",
        description="the sampler's prune ratios: one per group, one per stage (the groups at one resolution), or "
        "a blend (a weight per one-shot plan, the uniform, the global-ranking and the allocator's, and a tilt per "
        "stage)",
    )

    # the flat [space] keys of older configs this table reads (see search._config): key -> where it went
    flat_keys: ClassVar[dict[str, str]] = {"max_ratio": "max_ratio", "sample_by": "sample_by"}

    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, present: bool) -> dict[str, Any] | None:
        """The table the flat keys of an older config ask for (pruning is always on)."""
        return dict(flat)


def stages(space: ModelSpace) -> dict[str, list[str]]:
    """The groups by the resolution their outputs are computed at, in module order: ``stage1``, ``stage2``, ...

    A group's resolution is the number of positions its first output layer is
    applied at; attention head groups make stages of their own, one per
    number of tokens (their projections' positions); any other group without
    a conv/linear output is a stage of its own.
    """
    trace = space.costs.trace
    spatial, heads = trace.spatial, set(trace.heads)
    by_positions: dict[object, list[str]] = {}
    for g in space.groups:
        if g.id in heads:
            key: object = ("heads", next((spatial[n] for n in g.layers if n in spatial), g.id))
        else:
            key = spatial.get(g.outputs[0]) if g.outputs else g.id
        by_positions.setdefault(key, []).append(g.id)
    return {f"stage{i}": ids for i, ids in enumerate(by_positions.values(), start=1)}


def _units(space: ModelSpace, options: Mapping[str, Any]) -> dict[str, list[str]]:
    """The sampler's units of per-group or per-stage ratios: unit name to its group ids."""
    return stages(space) if options.get("sample_by") == "stages" else {g.id: [g.id] for g in space.groups}


class PruneDimension(Dimension, Sampled, Allocated, Reported):
    key = "prune"
    describe: ClassVar[dict[str, str]] = {"prune": "group id to ratio"}
    order = 0
    always_written = True
    fit_rule = "moved"
    options = PruneOptions  # [space.prune]; pruning is on without the table too

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
        """A prune ratio, uniform on ``[0, max_ratio]``, per group or per stage; or the blend's knobs.

        A stage is the groups whose outputs are computed at one resolution (the
        positions of their first output layer): ResNet-20's three, VGG's five.
        Three to five meaningful ratios (and the cost level) are what thirty
        candidates can learn; twelve to fifty independent ones are not. With
        ``sample_by = "blend"`` the sampler chooses a weight per anchor plan
        and a tilt per stage instead; the blend is the study's (it mixes the
        study's one-shot plans), so its adapter in :mod:`search.sampling`
        plays this role for pruning there.
        """
        high = float(options.get("max_ratio", 0.9))
        return {unit: ParamSpec(0.0, high) for unit in _units(space, options)}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        units = _units(space, options)
        ratios = {gid: float(v) for unit, v in values.items() for gid in units[unit]}
        channels = {g.id: g.channels for g in space.groups}
        # keep at least one channel of small groups
        return {"prune": {gid: min(r, (channels[gid] - 1) / channels[gid]) for gid, r in ratios.items() if r > 0}}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        """Per unit, the mean ratio of its groups (a plan uniform within each stage maps back exactly)."""
        units = _units(space, options)
        out = {}
        for unit, spec in specs.items():
            ratios = [float(plan.prune.get(gid, 0.0)) for gid in units[unit]]
            out[unit] = min(sum(ratios) / len(ratios), spec.high)
        return out

    # ------------------------------------------------------------ the allocator
    def _levels(self, space: ModelSpace, point: AllocPoint) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per group: the kept counts its blocks end at, and the value of keeping each (computed once)."""
        if "prune" not in point.cache:
            import numpy as np

            from spaces.policy._allocate import chain_levels

            levels, values = [], []
            sens = point.options.get("sensitivity")  # measured loss rises (spaces.policy._sensitivity), else importance
            orders = None if sens is not None else space.scores.order(space.importance)
            for i, g in enumerate(space.groups):
                lv = chain_levels(space.allowed_keeps(g), point.options["blocks"]) if point.options["prune"] else None
                lv = np.array([g.channels]) if lv is None else lv
                levels.append(lv)
                if sens is not None:
                    values.append(sens.values(g.id, g.channels, lv) / sens.scale)
                    continue
                scores = space.scores.of(i, space.importance)[orders[i]]  # type: ignore[index]
                cum = np.concatenate([[0.0], np.cumsum(scores)])
                # a group is worth one unit per layer whose outputs it prunes ("normalised per layer")
                share = cum[lv] / cum[-1] if cum[-1] > 0 else lv / g.channels
                values.append(max(1, len(g.outputs)) * share)
            point.cache["prune"] = (levels, values)
        return point.cache["prune"]

    def allocator_blocks(self, space: ModelSpace, point: AllocPoint) -> list[Block]:
        """Per group: its channels sorted by importance, cut into blocks at the allowed counts.

        Costs are one-channel finite differences of the exact cost around the
        point (MACs, params and bytes are linear in one group's count); the
        predicted latency, read from measured tables with flat steps, takes the
        chord from the point down to the group's smallest count instead, so a
        flat step at the point does not hide what pruning saves. A block's
        value is its share of the group's importance, or with a measured
        :class:`spaces.Sensitivity` (``allocate(sensitivity=...)``) the loss
        rise it avoids (see :mod:`spaces.policy._sensitivity`).
        """
        import numpy as np

        levels, values = self._levels(space, point)
        keep, costs = point.keep, space.costs
        at = point.vector(costs.cost_resolved(keep, point.resolved))
        chord = [i for i, m in enumerate(point.metrics) if m == "latency"]
        out = []
        for g, (group, lv, vals) in enumerate(zip(space.groups, levels, values, strict=True)):
            step = np.zeros_like(keep)
            step[g] = 1
            if keep[g] > 1:
                grad = at - point.vector(costs.cost_resolved(keep - step, point.resolved))
            elif keep[g] < group.channels:
                grad = point.vector(costs.cost_resolved(keep + step, point.resolved)) - at
            else:
                grad = np.zeros(len(point.metrics))
            if chord and lv[-1] > lv[0]:  # predicted latency: the chord down to the smallest count (or up)
                other = keep.copy()
                other[g] = lv[0] if keep[g] > lv[0] else lv[-1]
                rise = at - point.vector(costs.cost_resolved(other, point.resolved))
                grad[chord] = (rise / (keep[g] - other[g]))[chord]
            out.append(
                Block(
                    unit=group.id,
                    values=[float(vals[b] - vals[b - 1]) for b in range(1, len(lv))],
                    costs=[grad * (lv[b] - lv[b - 1]) for b in range(1, len(lv))],
                    base_value=float(vals[0]),
                    base_cost=grad * (lv[0] - keep[g]),
                )
            )
        return out

    def allocator_decode(self, space: ModelSpace, point: AllocPoint, choices: list[tuple[bool, int]]) -> None:
        levels, _ = self._levels(space, point)
        for g, (_, steps) in enumerate(choices):
            point.keep[g] = levels[g][steps]

    def allocator_entries(self, space: ModelSpace, point: AllocPoint) -> Entries:
        groups = zip(space.groups, point.keep, strict=True)
        return {"prune": {g.id: (g.channels - int(k)) / g.channels for g, k in groups if k < g.channels}}

    # ------------------------------------------------------------ the report
    def summary(self, plan: Plan, limit: int) -> str | None:
        if not plan.prune:
            return None
        top = sorted(plan.prune.items(), key=lambda kv: -kv[1])[:limit]
        shown = ", ".join(f"{g} {r:.0%}" for g, r in top)
        return f"{len(plan.prune)} groups pruned ({shown}{', …' if len(plan.prune) > limit else ''})"

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        keep = space.keep_counts(plan)
        return [
            StructureRow("kept channels", g.id, int(k), g.channels) for g, k in zip(space.groups, keep, strict=True)
        ]
