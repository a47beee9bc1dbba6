"""Plan dimensions: the contract (:class:`Dimension`) and its registry.

Channel pruning (``prune``), low-rank factorization (``rank`` with
``method``) and per-layer bits (``bits``) are the built-in dimensions; a new
one is one module with a :class:`Dimension` subclass (the core, plus the
roles it opts into: :class:`Sampled`, :class:`Allocated`, :class:`Measured`,
:class:`Reported`, :class:`Removing`) and one :func:`register_dimension` line, or an entry point
in the group ``prunetune.dimensions`` (see ``ARCHITECTURE.md``, "Where to
add"). Torch-free.
"""

from __future__ import annotations

from spaces.dimensions._base import (
    AllocPoint,
    Block,
    CostState,
    Dimension,
    Entries,
    ParamSpec,
    StructureRow,
    check_mapping,
)
from spaces.dimensions._registry import (
    DIMENSIONS,
    check_relations,
    dimension,
    dimensions,
    plan_keys,
    register_dimension,
    unregister_dimension,
)
from spaces.dimensions._roles import (
    ROLES,
    Allocated,
    Measured,
    Removing,
    Reported,
    Sampled,
    inside,
    register_role,
    removed_modules,
    role_of,
    voided,
    with_role,
)

__all__ = [
    "DIMENSIONS",
    "ROLES",
    "AllocPoint",
    "Allocated",
    "Block",
    "CostState",
    "Dimension",
    "Entries",
    "Measured",
    "ParamSpec",
    "Removing",
    "Reported",
    "Sampled",
    "StructureRow",
    "check_mapping",
    "check_relations",
    "dimension",
    "dimensions",
    "inside",
    "plan_keys",
    "register_dimension",
    "register_role",
    "removed_modules",
    "role_of",
    "unregister_dimension",
    "voided",
    "with_role",
]
