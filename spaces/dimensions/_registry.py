"""The registry of plan dimensions (a :class:`~spaces.Registry`, entry-point group ``prunetune.dimensions``).

The built-in dimensions are registered by module path and imported on first
use, so that ``import spaces`` stays light; a new dimension registers itself
with one line, :func:`register_dimension`, or, from a package installed beside
PruneTune, with an entry point in the group ``prunetune.dimensions``. Every
part of PruneTune that handles plans asks :func:`dimensions` (in costing and
surgery order) instead of naming a dimension.
"""

from __future__ import annotations

from collections.abc import Iterable

from spaces._errors import PlanError
from spaces._registry import Registry
from spaces.dimensions._base import Dimension

__all__ = [
    "DIMENSIONS",
    "check_relations",
    "dimension",
    "dimensions",
    "plan_keys",
    "register_dimension",
    "unregister_dimension",
]

RESERVED_KEYS = ("format", "importance", "round_to")  # the plan's own options
DIMENSIONS: Registry[Dimension] = Registry(
    "plan dimension",
    Dimension,
    group="prunetune.dimensions",
    builtins={
        "prune": "spaces.dimensions._prune:PruneDimension",
        "rank": "spaces.dimensions._rank:RankDimension",
        "bits": "spaces.dimensions._bits:BitsDimension",
        "depth": "spaces.dimensions._depth:DepthDimension",
    },
    name_attr="key",
    error=PlanError,
    what="plan dimension",
)
_sorted: list[tuple[Dimension, ...]] = []  # a cache of dimensions(), emptied by every registration
DIMENSIONS.on_change.append(_sorted.clear)


def register_dimension(dim: Dimension | type[Dimension], *, replace: bool = False) -> Dimension:
    """Add ``dim`` (an instance or a class) to the registry under ``dim.key``; returns the instance.

    Its keys must not collide with another dimension's (``replace=True``
    replaces a dimension registered under the same ``key``).
    """
    inst = DIMENSIONS.instance(dim)
    taken = {k: d.key for d in dimensions() if d.key != inst.key for k in d.keys}
    clash = sorted(k for k in inst.keys if k in taken or k in RESERVED_KEYS)
    if clash:
        raise ValueError(f"plan dimension {inst.key!r} claims plan key(s) {clash} that are already taken")
    return DIMENSIONS.register(inst, replace=replace)


def unregister_dimension(key: str) -> None:
    """Remove the dimension registered as ``key`` (built-ins come back with :func:`register_dimension`)."""
    DIMENSIONS.unregister(key)


def dimensions() -> tuple[Dimension, ...]:
    """Every registered dimension, in costing and surgery order (:attr:`Dimension.order`)."""
    if not _sorted:
        _sorted.append(tuple(sorted(DIMENSIONS.loaded(), key=lambda d: (d.order, d.key))))
    return _sorted[0]


def dimension(key: str) -> Dimension:
    """The dimension registered as ``key`` (a one-line error listing the registered ones otherwise)."""
    if key not in DIMENSIONS:
        raise PlanError(f"no plan dimension {key!r}; registered: {', '.join(DIMENSIONS.names())}")
    return DIMENSIONS.get(key)


def plan_keys() -> tuple[str, ...]:
    """Every JSON key a plan may hold: the options and each dimension's keys."""
    return (*RESERVED_KEYS, *(k for d in dimensions() for k in d.keys))


def check_relations(active: Iterable[str], *, where: str) -> None:
    """One :class:`~spaces.PlanError` naming every broken relation among the ``active`` dimensions' declarations.

    A dimension's :attr:`~spaces.dimensions.Dimension.requires` must be active
    with it, and no two active dimensions may conflict
    (:attr:`~spaces.dimensions.Dimension.conflicts`, declared on either side).
    ``where`` says what combined them (``"[space]"``, ``"allocate"``).
    """
    on = set(active)
    missing, clashes = [], []
    for dim in dimensions():
        if dim.key not in on:
            continue
        missing += [f"{dim.key} requires {need}, which is off" for need in dim.requires if need not in on]
        clashes += [
            f"{dim.key} and {other} cannot be searched together ({why})"
            for other, why in sorted(dim.conflicts.items())
            if other in on
        ]
    if missing or clashes:
        raise PlanError(f"{where}: {'; '.join(clashes + missing)}" + (": choose one" if clashes else ""))
