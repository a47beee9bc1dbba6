"""Plan dimensions: the contract (:class:`Dimension`) and its registry.

Channel pruning (``prune``) and low-rank factorization (``rank`` with
``method``) are the built-in dimensions; a new one is one module with a
:class:`Dimension` subclass and one :func:`register_dimension` line (see
``ARCHITECTURE.md``, "Where to add"). Torch-free.
"""

from __future__ import annotations

from spaces.dimensions._base import AllocPoint, Block, CostState, Dimension, ParamSpec, StructureRow
from spaces.dimensions._registry import (
    dimension,
    dimensions,
    plan_keys,
    register_dimension,
    unregister_dimension,
)

__all__ = [
    "AllocPoint",
    "Block",
    "CostState",
    "Dimension",
    "ParamSpec",
    "StructureRow",
    "dimension",
    "dimensions",
    "plan_keys",
    "register_dimension",
    "unregister_dimension",
]
