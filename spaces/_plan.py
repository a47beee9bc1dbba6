"""``Plan``: what to change in a model, as plain JSON-able data."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spaces._errors import InputTypeError, PlanError
from spaces._vocab import Importance, Method

__all__ = ["IMPORTANCES", "METHODS", "Plan"]

IMPORTANCES = tuple(i.value for i in Importance)
METHODS = tuple(m.value for m in Method)
_FORMAT = 1


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(d.items())))


def _check_rank(layer: str, rank: Any) -> int | float:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise InputTypeError(f"rank of layer {layer!r} must be an int or a fraction in (0, 1], got {rank!r}")
    if isinstance(rank, int):
        if rank < 1:
            raise PlanError(f"rank of layer {layer!r} must be >= 1, got {rank}")
        return rank
    if not 0.0 < rank <= 1.0:
        raise PlanError(f"rank fraction of layer {layer!r} must be in (0, 1], got {rank!r}")
    return float(rank)


@dataclass(frozen=True)
class Plan:
    """A compression plan.

    ``prune`` maps a group id of a :class:`~spaces.ModelSpace` to the fraction of
    its channels to remove, in ``[0, 1)``. Groups that are absent keep every
    channel. ``rank`` maps a layer name to a rank (``int`` >= 1, at most the
    layer's full rank, or a fraction in ``(0, 1]`` of the layer's full rank) and
    ``method`` maps a layer to ``"svd"`` (the default), ``"tucker2"`` or
    ``"tt"``; a layer is pruned first, then factorized (see
    :mod:`spaces._lowrank`). Ranks mean what they say: fractions are resolved on
    the pruned shape, and **a rank at or above the layer's break-even rank**
    (:meth:`spaces.LayerGeom.max_useful_rank`) **keeps the layer dense** --
    exactly the original layer, so ``1.0`` or the full rank never changes the
    model; a rank below it is factorized at exactly that rank. ``importance``
    and ``round_to`` say how channels are chosen and rounded; ``None`` means
    "the space's default", and plans made by a space carry the space's values
    so that they rebuild the same model anywhere.

    The plan is immutable; its JSON form round-trips exactly and :attr:`hash` is
    a stable identifier (SHA-256 of the canonical JSON, first 16 hex digits).
    Checking the plan against a model (known ids, no empty group) is
    :meth:`spaces.ModelSpace.validate`.
    """

    prune: Mapping[str, float] = field(default_factory=dict)
    importance: str | None = None
    round_to: int | None = None
    rank: Mapping[str, int | float] = field(default_factory=dict)
    method: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prune, Mapping):
            raise InputTypeError(f"Plan.prune must be a mapping of group id to ratio, got {type(self.prune).__name__}")
        clean: dict[str, float] = {}
        for gid, ratio in self.prune.items():
            if not isinstance(gid, str):
                raise InputTypeError(f"Plan.prune keys must be group ids (str), got {gid!r}")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
                raise InputTypeError(f"prune ratio of group {gid!r} must be a number, got {ratio!r}")
            r = float(ratio)
            if not (0.0 <= r < 1.0) or math.isnan(r):
                raise PlanError(f"prune ratio of group {gid!r} must be in [0, 1), got {ratio!r}")
            if r > 0.0:
                clean[gid] = r
        object.__setattr__(self, "prune", _frozen(clean))
        if not isinstance(self.rank, Mapping) or not isinstance(self.method, Mapping):
            raise InputTypeError("Plan.rank and Plan.method must be mappings keyed by layer name")
        object.__setattr__(self, "rank", _frozen({str(k): _check_rank(k, v) for k, v in self.rank.items()}))
        for layer, m in self.method.items():
            if m not in METHODS:
                raise PlanError(f"method of layer {layer!r} must be one of {', '.join(METHODS)}, got {m!r}")
            if layer not in self.rank:
                raise PlanError(f"layer {layer!r} has a method but no rank")
        object.__setattr__(self, "method", _frozen({k: v for k, v in self.method.items() if v != "svd"}))
        if self.importance is not None and self.importance not in IMPORTANCES:
            raise PlanError(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise PlanError(f"round_to must be an integer >= 1, got {self.round_to!r}")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": _FORMAT, "prune": dict(self.prune)}
        if self.rank:
            d["rank"] = dict(self.rank)
        if self.method:
            d["method"] = dict(self.method)
        if self.importance is not None:
            d["importance"] = self.importance
        if self.round_to is not None:
            d["round_to"] = self.round_to
        return d

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if not isinstance(data, Mapping):
            raise InputTypeError(f"a plan must be a JSON object, got {type(data).__name__}")
        known = {"format", "prune", "importance", "round_to", "rank", "method"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"unknown plan key(s) {unknown}; known keys are {sorted(known)}")
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise PlanError(f"plan format must be {_FORMAT}, got {fmt!r}")
        maps = {}
        for key, what in (("prune", "group id to ratio"), ("rank", "layer to rank"), ("method", "layer to method")):
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise InputTypeError(
                    f"plan key {key!r} must be a JSON object mapping {what}, got {type(value).__name__} {value!r}"
                )
            maps[key] = dict(value)
        return cls(
            prune=maps["prune"],
            importance=data.get("importance"),
            round_to=data.get("round_to"),
            rank=maps["rank"],
            method=maps["method"],
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def is_empty(self) -> bool:
        return not self.prune and not self.rank

    def method_of(self, layer: str) -> str:
        return self.method.get(layer, "svd")

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.to_json() == other.to_json()
