"""The registry of factorization methods (a :class:`~spaces.Registry`, entry-point group ``prunetune.methods``).

Built-ins are registered by module path so that naming a method (validating a
plan) stays torch-free; :func:`register_method` adds one with one line, and a
package installed beside PruneTune adds one with an entry point.
"""

from __future__ import annotations

from spaces._errors import PlanError
from spaces._registry import Registry
from spaces.factorization._base import FactorMethod

__all__ = ["FACTOR_METHODS", "factor_method", "method_names", "register_method"]

FACTOR_METHODS: Registry[FactorMethod] = Registry(
    "factorization method",
    FactorMethod,
    group="prunetune.methods",
    builtins={
        "svd": "spaces.factorization._svd:SVD",
        "whitened": "spaces.factorization._whitened:Whitened",
        "tucker2": "spaces.factorization._tucker2:Tucker2",
        "tt": "spaces.factorization._tt:TensorTrain",
        "versatile": "spaces.factorization._versatile:Versatile",
        "versatile_ch": "spaces.factorization._versatile:VersatileChannel",
    },
    error=PlanError,
    what="method",
)


def register_method(method: FactorMethod | type[FactorMethod]) -> FactorMethod:
    """Add ``method`` (an instance or a class) under its ``name``; returns the instance."""
    return FACTOR_METHODS.register(method, replace=True)


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order (``svd`` first: the default)."""
    return FACTOR_METHODS.names()


def factor_method(name: str) -> FactorMethod:
    """The method registered as ``name`` (a one-line error listing the registered ones otherwise)."""
    return FACTOR_METHODS.get(name)
