"""The registry of plan dimensions: names to factories, imported when first needed.

The built-in dimensions are registered by module path (``"module:Class"``) and
imported on first use, so that ``import spaces`` stays light; a new dimension
registers itself with one line, :func:`register_dimension`. Every part of
PruneTune that handles plans asks :func:`dimensions` (in costing and surgery
order) instead of naming a dimension.
"""

from __future__ import annotations

import importlib

from spaces._errors import PlanError
from spaces.dimensions._base import Dimension

__all__ = ["dimension", "dimensions", "plan_keys", "register_dimension", "unregister_dimension"]

_BUILTIN = {
    "prune": "spaces.dimensions._prune:PruneDimension",
    "rank": "spaces.dimensions._rank:RankDimension",
    "bits": "spaces.dimensions._bits:BitsDimension",
}
_entries: dict[str, Dimension | str] = dict(_BUILTIN)
_sorted: list[tuple[Dimension, ...]] = []  # a cache of dimensions(), emptied by every registration


def _load(path: str) -> Dimension:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls()


def register_dimension(dim: Dimension | type[Dimension], *, replace: bool = False) -> Dimension:
    """Add ``dim`` (an instance or a class) to the registry under ``dim.key``; returns the instance.

    Its keys must not collide with another dimension's (``replace=True``
    replaces a dimension registered under the same ``key``).
    """
    inst = dim() if isinstance(dim, type) else dim
    if not isinstance(inst, Dimension):
        raise TypeError(f"a plan dimension must subclass spaces.dimensions.Dimension, got {type(inst).__name__}")
    if inst.key in _entries and not replace:
        raise ValueError(f"plan dimension {inst.key!r} is already registered (pass replace=True to replace it)")
    taken = {k: d.key for d in dimensions() if d.key != inst.key for k in d.keys}
    clash = sorted(k for k in inst.keys if k in taken or k in ("format", "importance", "round_to"))
    if clash:
        raise ValueError(f"plan dimension {inst.key!r} claims plan key(s) {clash} that are already taken")
    _entries[inst.key] = inst
    _sorted.clear()
    return inst


def unregister_dimension(key: str) -> None:
    """Remove the dimension registered as ``key`` (built-ins come back with :func:`register_dimension`)."""
    if key not in _entries:
        raise PlanError(f"no plan dimension {key!r}; registered: {', '.join(_entries)}")
    del _entries[key]
    _sorted.clear()


def dimensions() -> tuple[Dimension, ...]:
    """Every registered dimension, in costing and surgery order (:attr:`Dimension.order`)."""
    if not _sorted:
        for key, entry in list(_entries.items()):
            if isinstance(entry, str):
                _entries[key] = _load(entry)
        loaded = [e for e in _entries.values() if isinstance(e, Dimension)]
        _sorted.append(tuple(sorted(loaded, key=lambda d: (d.order, d.key))))
    return _sorted[0]


def dimension(key: str) -> Dimension:
    """The dimension registered as ``key`` (a one-line error listing the registered ones otherwise)."""
    for d in dimensions():
        if d.key == key:
            return d
    raise PlanError(f"no plan dimension {key!r}; registered: {', '.join(d.key for d in dimensions())}")


def plan_keys() -> tuple[str, ...]:
    """Every JSON key a plan may hold: the options and each dimension's keys."""
    return ("format", "importance", "round_to", *(k for d in dimensions() for k in d.keys))
