"""``Plan``: what to change in a model, as plain JSON-able data, one entry per registered dimension."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from spaces._errors import InputTypeError, PlanError
from spaces._vocab import Importance, Method
from spaces.dimensions import check_mapping, dimensions, plan_keys

__all__ = ["IMPORTANCES", "METHODS", "Plan"]

IMPORTANCES = tuple(i.value for i in Importance)
METHODS = tuple(m.value for m in Method)
_FORMAT = 1
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Plan:
    """A compression plan: one entry per plan dimension, plus how channels are chosen.

    The built-in dimensions (:mod:`spaces.dimensions`): ``prune`` maps a group
    id of a :class:`~spaces.ModelSpace` to the fraction of its channels to
    remove, in ``[0, 1)``; groups that are absent keep every channel. ``rank``
    maps a layer name to a rank (``int`` >= 1, at most the layer's full rank,
    or a fraction in ``(0, 1]`` of the layer's full rank) and ``method`` maps a
    layer to ``"svd"`` (the default), ``"tucker2"`` or ``"tt"``; a layer is
    pruned first, then factorized (see :mod:`spaces._lowrank`). Ranks mean what
    they say: fractions are resolved on the pruned shape, and **a rank at or
    above the layer's break-even rank** (:meth:`spaces.LayerGeom.max_useful_rank`)
    **keeps the layer dense** -- exactly the original layer, so ``1.0`` or the
    full rank never changes the model; a rank below it is factorized at exactly
    that rank. A registered dimension's entries are keyword arguments too
    (``Plan(prune={...}, bits={...})``) and attributes (``plan.bits``).

    ``importance`` and ``round_to`` say how channels are chosen and rounded;
    ``None`` means "the space's default", and plans made by a space carry the
    space's values so that they rebuild the same model anywhere.

    The plan is immutable; its JSON form round-trips exactly and :attr:`hash` is
    a stable identifier (SHA-256 of the canonical JSON, first 16 hex digits). A
    dimension a plan does not use writes nothing, so registering a dimension
    never changes the JSON or hash of an older plan. Checking the plan against a
    model (known ids, no empty group) is :meth:`spaces.ModelSpace.validate`.
    """

    __slots__ = ("_values", "importance", "round_to")
    _values: dict[str, Mapping[str, Any]]
    importance: str | None
    round_to: int | None

    def __init__(
        self,
        prune: Mapping[str, float] | None = None,
        importance: str | None = None,
        round_to: int | None = None,
        rank: Mapping[str, int | float] | None = None,
        method: Mapping[str, str] | None = None,
        **entries: Mapping[str, Any] | None,
    ) -> None:
        raw = {"prune": prune, "rank": rank, "method": method, **entries}
        known = {k for d in dimensions() for k in d.keys}
        unknown = sorted(k for k, v in raw.items() if k not in known and v is not None)
        if unknown:
            raise PlanError(f"unknown plan key(s) {unknown}; known keys are {sorted(plan_keys())}")
        values: dict[str, Mapping[str, Any]] = {}
        for dim in dimensions():
            mine: dict[str, Mapping[str, Any]] = {
                k: dict(check_mapping(dim, k, raw.get(k), source="python")) for k in dim.keys
            }
            for key, value in dim.normalize(mine).items():
                values[key] = MappingProxyType(dict(sorted(value.items())))
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "importance", _check_importance(importance))
        object.__setattr__(self, "round_to", _check_round_to(round_to))

    def __getattr__(self, name: str) -> Mapping[str, Any]:
        """A dimension's entry by its JSON key (``plan.prune``, ``plan.rank``, ``plan.method``, ...)."""
        if name.startswith("_"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        if any(name in d.keys for d in dimensions()):  # registered after this plan was made
            return _EMPTY
        raise AttributeError(f"'Plan' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"a Plan is immutable: cannot set {name!r}")

    def entries(self, key: str) -> Mapping[str, Any]:
        """The mapping of plan key ``key`` (empty when the plan does not use it)."""
        return self._values.get(key, _EMPTY)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": _FORMAT}
        for dim in dimensions():
            d.update(dim.to_json({k: self.entries(k) for k in dim.keys}))
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
        known = plan_keys()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PlanError(f"unknown plan key(s) {unknown}; known keys are {sorted(known)}")
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise PlanError(f"plan format must be {_FORMAT}, got {fmt!r}")
        entries: dict[str, Mapping[str, Any]] = {}
        for dim in dimensions():
            for key in dim.keys:
                if key in data:
                    if not isinstance(data[key], Mapping):
                        check_mapping(dim, key, data[key], source="json")  # raises, naming the key
                    entries[key] = dict(data[key])
        return cls(importance=data.get("importance"), round_to=data.get("round_to"), **entries)

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
        """True when no dimension changes anything (the original model)."""
        return all(dim.is_empty({k: self.entries(k) for k in dim.keys}) for dim in dimensions())

    def replace(self, **changes: Any) -> Plan:
        """A copy with some entries (by plan key) or options replaced."""
        current: dict[str, Any] = {k: dict(v) for k, v in self._values.items()}
        current.update(importance=self.importance, round_to=self.round_to)
        current.update(changes)
        return Plan(**current)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Plan.from_json, (self.to_json(),))

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Plan({self.to_json()})"


def _check_importance(importance: Any) -> str | None:
    if importance is not None and importance not in IMPORTANCES:
        raise PlanError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    return importance


def _check_round_to(round_to: Any) -> int | None:
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise PlanError(f"round_to must be an integer >= 1, got {round_to!r}")
    return round_to
