"""Low-rank factorization methods: the contract (:class:`FactorMethod`) and its registry (torch-free)."""

from __future__ import annotations

from spaces.factorization._base import FactorMethod
from spaces.factorization._registry import FACTOR_METHODS, factor_method, method_names, register_method

__all__ = ["FACTOR_METHODS", "FactorMethod", "factor_method", "method_names", "register_method"]
