"""Pruning's sampler in a study: per-group or per-stage ratios, or a blend of the study's one-shot plans.

The prune dimension samples a ratio per group or per stage itself
(:class:`spaces.dimensions.Sampled`); what needs a study is the *blend*
(``space.sample_by = "blend"``): the sampler chooses a weight per anchor plan
(the uniform, the global-ranking and the allocator's plans the study seeds
with, :data:`BLEND_ANCHORS`) and a tilt per stage, and :func:`blend` turns
them into ratios. :class:`PruneSampling` plays the sampled role for pruning
(registered for the key ``prune`` with :func:`spaces.dimensions.register_role`
when :mod:`search.sampling` is imported): with the blend it maps the knobs, and
otherwise it asks the dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spaces import PlanError
from spaces.dimensions import ParamSpec, Sampled, dimension

if TYPE_CHECKING:
    from spaces import ModelSpace, Plan
    from spaces.dimensions import Entries

__all__ = ["BLEND_ANCHORS", "TILTS", "PruneSampling", "blend", "blend_weights"]

BLEND_ANCHORS = ("uniform", "global", "allocator")  # the one-shot plans a blend mixes (the study's seed kinds)
TILTS = (0.5, 2.0)  # a stage's tilt: its kept fractions raised to this power (log-uniform)


def _anchors(options: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    anchors = options.get("anchors") or {}
    missing = [name for name in BLEND_ANCHORS if name not in anchors]
    if missing:
        raise PlanError(
            f'sample_by = "blend" needs the anchor plans {", ".join(BLEND_ANCHORS)} in the options '
            f"(options['anchors'] = {{name: {{group id: ratio}}}}); missing: {', '.join(missing)}"
        )
    return {name: anchors[name] for name in BLEND_ANCHORS}


def blend(
    space: ModelSpace, anchors: Mapping[str, Mapping[str, float]], values: Mapping[str, float]
) -> dict[str, float]:
    """Per group, the prune ratio of a blend of ``anchors`` (name to ``{group id: ratio}``) with ``values``' knobs.

    A group keeps the weighted mean of the fractions the anchors keep of it
    (``values[name]`` are the weights, all zero meaning equal ones), raised to
    its stage's tilt (``values[stage]``, 1 when absent: a tilt above 1 prunes
    the stage harder, below 1 spares it). The sampler so moves between the
    uniform, the global-ranking and the allocator's plans, and shifts the
    cuts between resolutions, with a handful of parameters; ``fit`` then moves
    the blend onto the sampled cost level.
    """
    import numpy as np

    weights = np.array([max(0.0, float(values.get(name, 0.0))) for name in anchors])
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(anchors), 1.0 / len(anchors))
    tilt = {gid: float(values.get(unit, 1.0)) for unit, ids in space.stages().items() for gid in ids}
    out = {}
    for g in space.groups:
        kept = sum(w * (1.0 - float(a.get(g.id, 0.0))) for w, a in zip(weights, anchors.values(), strict=True))
        out[g.id] = 1.0 - kept ** tilt[g.id]
    return out


def blend_weights(space: ModelSpace, anchors: Mapping[str, Mapping[str, float]], plan: Plan) -> dict[str, float]:
    """The anchors' weights (largest 1) whose blend keeps fractions closest to ``plan``'s (non-negative least
    squares); an anchor itself maps to its own weight 1 and the others' 0."""
    import numpy as np
    from scipy.optimize import nnls

    ids = [g.id for g in space.groups]
    basis = np.array([[1.0 - float(a.get(gid, 0.0)) for a in anchors.values()] for gid in ids])
    target = np.array([1.0 - float(plan.prune.get(gid, 0.0)) for gid in ids])
    weights, _ = nnls(basis, target)
    weights = weights / weights.max() if weights.max() > 0 else np.ones(len(anchors))
    return {name: float(w) for name, w in zip(anchors, weights, strict=True)}


class PruneSampling(Sampled):
    """The sampled role of pruning in a study: the blend's knobs with ``sample_by = "blend"``, else the
    dimension's own per-group or per-stage ratios."""

    key = "prune"

    def _own(self) -> Sampled:
        own = dimension(self.key)
        assert isinstance(own, Sampled)
        return own

    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """A weight in ``[0, 1]`` per anchor plan and a log-uniform tilt in :data:`TILTS` per stage."""
        if options.get("sample_by") != "blend":
            return self._own().params(space, options)
        weights = {name: ParamSpec(0.0, 1.0) for name in BLEND_ANCHORS}
        return weights | {unit: ParamSpec(*TILTS, log=True) for unit in space.stages()}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        if options.get("sample_by") != "blend":
            return self._own().from_params(space, values, options)
        ratios = blend(space, _anchors(options), values)  # per group: the dimension's own per-group mapping
        return self._own().from_params(space, ratios, {**options, "sample_by": "groups"})

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        """With the blend: the anchors' weights closest to the plan (:func:`blend_weights`), tilts 1."""
        if options.get("sample_by") != "blend":
            return self._own().to_params(space, plan, specs, options)
        weights = blend_weights(space, _anchors(options), plan)
        return {unit: weights.get(unit, 1.0) for unit in specs}
