"""The registry of factorization methods: names to classes, imported when first needed.

Built-ins are registered by module path so that naming a method (validating a
plan) stays torch-free; :func:`register_method` adds one with one line.
"""

from __future__ import annotations

import importlib

from spaces._errors import PlanError
from spaces.factorization._base import FactorMethod

__all__ = ["factor_method", "method_names", "register_method"]

_entries: dict[str, FactorMethod | str] = {
    "svd": "spaces.factorization._svd:SVD",
    "tucker2": "spaces.factorization._tucker2:Tucker2",
    "tt": "spaces.factorization._tt:TensorTrain",
    "versatile": "spaces.factorization._versatile:Versatile",
    "versatile_ch": "spaces.factorization._versatile:VersatileChannel",
}


def register_method(method: FactorMethod | type[FactorMethod]) -> FactorMethod:
    """Add ``method`` (an instance or a class) under its ``name``; returns the instance."""
    inst = method() if isinstance(method, type) else method
    if not isinstance(inst, FactorMethod):
        raise TypeError(f"a factorization method must subclass FactorMethod, got {type(inst).__name__}")
    _entries[inst.name] = inst
    return inst


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order (``svd`` first: the default)."""
    return tuple(_entries)


def factor_method(name: str) -> FactorMethod:
    """The method registered as ``name`` (a one-line error listing the registered ones otherwise)."""
    entry = _entries.get(name)
    if entry is None:
        raise PlanError(f"method must be one of {', '.join(_entries)}, got {name!r}")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = _entries[name] = getattr(importlib.import_module(module), cls)()
    return entry
