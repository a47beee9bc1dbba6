"""Measured sensitivity: how much the loss rises when one group alone is pruned (NetAdapt's and AMC's analysis).

:func:`measure_sensitivity` prunes each group of the space by itself to a few
ratios (the space's criterion chooses the channels) and asks a ``score``
callback for each model's loss; the caller's callback decides how (the
search's recalibrates BatchNorm on calibration batches, then takes the
cross-entropy on them). The :class:`Sensitivity` table is small and JSON, so a
study computes it once per base model and caches it.

The allocator (:func:`spaces.allocate` with ``sensitivity=``) then values a
group's kept channels by the loss they avoid: ``-rise(k)``, interpolated
linearly in the kept count ``k`` between the measured points (from one channel
to the whole group, where the rise is 0), made non-decreasing in ``k``, and divided by the mean over
groups of the largest rise measured, so that a group is worth about one unit,
as the importance shares it replaces. Summing the groups' rises is the
additive approximation NetAdapt and AMC make; it is what lets one integer
program trade channels between groups under every budget at once.

Other plan dimensions take part through their
:meth:`spaces.dimensions.Measured.sensitivity_plans`: each unit (a layer) is
given alone each choice the dimension names (the bits dimension: 8 and 4
bits), and the rise is kept as ``dims[key][unit][choice]``, so the allocator
values those choices in the same unit as the channels and one program trades
them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from spaces._plan import Plan
from spaces.dimensions import Measured, with_role

if TYPE_CHECKING:
    from torch import nn

    from spaces._space import ModelSpace

__all__ = ["SENSITIVITY_RATIOS", "Sensitivity", "measure_sensitivity"]

SENSITIVITY_RATIOS = (0.25, 0.5, 0.75, 0.9)  # each group is also measured down to one channel


@dataclass(frozen=True)
class Sensitivity:
    """Per group id, ``(kept channels, loss rise)`` points; ``base`` is the unpruned model's loss."""

    base: float
    points: dict[str, list[tuple[int, float]]]
    dims: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # key -> unit -> choice -> rise

    def values(self, gid: str, channels: int, levels: np.ndarray) -> np.ndarray:
        """The value of keeping ``levels`` channels of group ``gid``: minus the interpolated rise, non-decreasing."""
        pts = sorted([*self.points.get(gid, []), (channels, 0.0)])
        ks = np.array([k for k, _ in pts], dtype=np.float64)
        rise = np.array([r for _, r in pts], dtype=np.float64)
        value = -np.interp(levels.astype(np.float64), ks, rise)
        return np.maximum.accumulate(value)

    @property
    def scale(self) -> float:
        """The mean over groups of the largest rise measured (what one unit of value stands for)."""
        tops = [max((r for _, r in pts), default=0.0) for pts in self.points.values()]
        mean = float(np.mean(tops)) if tops else 0.0
        return mean if mean > 0 else 1.0

    def rises(self, key: str, unit: str) -> dict[str, float]:
        """The rises measured for dimension ``key``'s ``unit``, by choice (``{}`` if none were)."""
        return self.dims.get(key, {}).get(unit, {})

    def to_json(self) -> str:
        data: dict[str, Any] = {"base": self.base, "points": {g: [list(p) for p in v] for g, v in self.points.items()}}
        if self.dims:
            data["dims"] = self.dims
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        data = json.loads(text)
        points = {str(g): [(int(k), float(r)) for k, r in v] for g, v in data["points"].items()}
        dims = {
            str(key): {str(u): {str(c): float(r) for c, r in ch.items()} for u, ch in units.items()}
            for key, units in data.get("dims", {}).items()
        }
        return cls(float(data["base"]), points, dims)


def measure_sensitivity(
    space: ModelSpace,
    score: Callable[[nn.Module], float],
    ratios: Sequence[float] = SENSITIVITY_RATIOS,
    options: Mapping[str, Any] | None = None,
) -> Sensitivity:
    """Prune each group alone to each of ``ratios`` and measure ``score`` (a loss: lower is better).

    ``score`` gets a fresh model each time (built by :meth:`ModelSpace.apply`).
    Each group is also measured down to one channel, so the allocator never
    extrapolates; a ratio that keeps all of a group, or a count already
    measured, is skipped. ``options`` (the allocator's: ``bits=True``, ...)
    turn on the other dimensions' choices (see the module docs); a score of a
    quantized model must calibrate its input quantizers (a forward pass in
    training mode, as BatchNorm recalibration is).
    """
    base = float(score(space.apply(Plan())))
    dims: dict[str, dict[str, dict[str, float]]] = {}
    for dim in with_role(Measured):
        for unit, choices in dim.sensitivity_plans(space, options or {}).items():
            rises = {c: float(score(space.apply(_plan(entries)))) - base for c, entries in choices.items()}
            dims.setdefault(dim.key, {})[unit] = rises
    return Sensitivity(base, _group_points(space, score, ratios, base), dims)


def _plan(entries: Mapping[str, Any]) -> Plan:
    kwargs: dict[str, Any] = dict(entries)
    return Plan(**kwargs)


def _group_points(
    space: ModelSpace, score: Callable[[nn.Module], float], ratios: Sequence[float], base: float
) -> dict[str, list[tuple[int, float]]]:
    """Per group, ``(kept channels, loss rise)`` with that group alone pruned to each ratio and to one channel."""
    points: dict[str, list[tuple[int, float]]] = {}
    for g in space.groups:
        pts: list[tuple[int, float]] = []
        for r in (*ratios, (g.channels - 1) / g.channels):  # and the group down to one channel
            if g.channels - math.floor(r * g.channels + 0.5) < 1:
                continue
            plan = Plan({g.id: float(r)})
            keep = int(space.keep_counts(plan)[space.costs.group_index(g.id)])
            if keep < g.channels and all(k != keep for k, _ in pts):
                pts.append((keep, float(score(space.apply(plan))) - base))
        points[g.id] = pts
    return points
