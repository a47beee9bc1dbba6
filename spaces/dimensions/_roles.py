"""The opt-in roles of a plan dimension: what the sampler, the allocator, the sensitivity and the report ask.

A :class:`~spaces.dimensions.Dimension` implements a small core (its key,
JSON, cost, surgery, verification). Everything else is a *role* that the
dimension opts into by subclassing it, and that the role's consumer asks for:

* :class:`Sampled`: the search's parameters and their round trip (the sampler
  in :mod:`search.sampling`, the one-shot seed plans);
* :class:`Allocated`: the dimension's binary variables in the COBLA-style 0-1
  program (:mod:`spaces.policy._allocate`);
* :class:`Measured`: the plans whose loss rises the sensitivity table measures
  (:func:`spaces.measure_sensitivity`);
* :class:`Reported`: the tables' short phrase, the structure panel's rows and
  what an export's ``model.json`` says;
* :class:`Removing`: the modules a plan replaces by their shortcut (depth),
  which the cost model, the surgery and the latency model then leave out:
  every later dimension's entries on layers inside them are void.

A consumer asks :func:`with_role` for the dimensions that play its role; a
dimension that does not is skipped, and the first time it is skipped a
one-line note says so on the ``prunetune`` logger (a plan that uses it is
still costed, built and verified: only that consumer does not see it). A
built-in dimension may also get a role from an *adapter* registered for its
key (:func:`register_role`): pruning's sampler (the blend of anchor plans,
stages) lives in :mod:`search.sampling`, beside the other sampling code, and
registers itself there. Torch-free.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from spaces.dimensions._base import AllocPoint, Block, Dimension, Entries, ParamSpec, StructureRow
from spaces.dimensions._registry import dimensions

if TYPE_CHECKING:
    from spaces._plan import Plan
    from spaces._space import ModelSpace

__all__ = [
    "ROLES",
    "Allocated",
    "Measured",
    "Removing",
    "Reported",
    "Sampled",
    "inside",
    "register_role",
    "removed_modules",
    "role_of",
    "voided",
    "with_role",
]

log = logging.getLogger("prunetune")
R = TypeVar("R")


class Sampled(ABC):
    """The sampler's role: parameters keyed by unit, and the mapping between their values and plan entries.

    ``options`` are the study's ``[space]`` options (``max_ratio``, ``rank``,
    ``method``, ``quantize``, ...); ``search`` names each parameter
    ``"<key>:<unit>"`` and translates the specs to its sampler.
    """

    key: ClassVar[str]

    @abstractmethod
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """The sampler's parameters of this dimension, keyed by unit; ``{}`` when the study does not search it."""

    @abstractmethod
    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        """The plan entries for the sampled ``values`` (keyed by unit, as in :meth:`params`)."""

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        """The values of ``specs`` closest to ``plan`` (to tell the sampler about a seed plan); none by default."""
        return {}

    def seed_entries(self, space: ModelSpace, options: Mapping[str, Any]) -> Entries:
        """What the study's one-shot seed plans (uniform, global ranking) get of this dimension (none by default).

        A dimension the study searches may give its safest setting here (bits:
        every layer at 8 bits), so that the seeds use it before ``fit`` prunes
        them onto the budget.
        """
        return {}


class Allocated(ABC):
    """The allocator's role: the dimension's variables in the 0-1 program, what the solver's choices mean."""

    key: ClassVar[str]

    @abstractmethod
    def allocator_blocks(self, space: ModelSpace, point: AllocPoint) -> list[Block]:
        """This dimension's variables around ``point`` (``[]``: it takes no part this time)."""

    @abstractmethod
    def allocator_decode(self, space: ModelSpace, point: AllocPoint, choices: list[tuple[bool, int]]) -> None:
        """Move ``point`` to the solver's ``choices`` for this dimension's blocks, in their order.

        A choice is ``(alternative taken, chain steps taken)``. Dimensions
        decode in :attr:`~spaces.dimensions.Dimension.order`, so ``point.keep``
        already holds the kept channels the pruning chose.
        """

    @abstractmethod
    def allocator_entries(self, space: ModelSpace, point: AllocPoint) -> Entries:
        """The plan entries of the allocator's final ``point``."""

    def allocator_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The :func:`spaces.allocate` options (``bits=True``, ...) that a study's ``[space]`` options ask for.

        The study passes them to the allocator and to the sensitivity
        measurement, so it never names a dimension; none by default.
        """
        return {}


class Measured(ABC):
    """The sensitivity table's role: the plans whose loss rise measures each of the dimension's choices."""

    key: ClassVar[str]

    @abstractmethod
    def sensitivity_plans(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, dict[str, Entries]]:
        """Per unit and choice, the plan entries whose loss rise :func:`spaces.measure_sensitivity` measures.

        ``options`` are the allocator's (``bits=True``, ...).
        """


class Reported(ABC):
    """The report's role: a phrase for the tables, rows for the structure panel, notes for ``model.json``."""

    key: ClassVar[str]

    @abstractmethod
    def summary(self, plan: Plan, limit: int) -> str | None:
        """A short phrase for tables ("12 groups pruned (conv1 50%, ...)"); None when the plan does not use it."""

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        """Per unit of the space, what ``plan`` keeps of it (none by default)."""
        return []

    def export_notes(self, plan: Plan) -> dict[str, Any] | None:
        """What an export's ``model.json`` says about this dimension's part of ``plan`` (None: not used)."""
        return None


class Removing(ABC):
    """The role of a dimension that removes whole modules (replacing each by its shortcut, the identity).

    Its consumers are the mechanism, not a policy: :meth:`spaces.CostModel.resolve`
    voids every later dimension's plan entries on layers inside the removed
    modules (a rank or bits of a layer that is gone does nothing, and costs
    nothing), the surgery applies the later dimensions to what is left, and
    the latency model does not time the removed layers. The dimension's own
    :meth:`~spaces.dimensions.Dimension.add_cost` takes the removed modules'
    cost away (:meth:`spaces.CostModel.modules_state` gives it exactly).
    """

    key: ClassVar[str]

    @abstractmethod
    def removed(self, resolved: Any) -> tuple[str, ...]:
        """The module names this dimension's resolved part removes (``()``: none)."""


ROLES: tuple[type, ...] = (Sampled, Allocated, Measured, Reported, Removing)
_adapters: dict[tuple[type, str], Any] = {}  # (role, dimension key) -> an adapter playing the role for it
_said: set[tuple[type, str]] = set()


def register_role(role: type[R], key: str, adapter: R) -> R:
    """Let ``adapter`` (an instance of ``role``) play ``role`` for the dimension registered as ``key``."""
    if role not in ROLES:
        raise TypeError(f"role must be one of {', '.join(r.__name__ for r in ROLES)}, got {role!r}")
    if not isinstance(adapter, role):
        got = type(adapter).__name__
        raise TypeError(f"a {role.__name__} adapter must be an instance of {role.__name__}, got {got}")
    _adapters[(role, key)] = adapter
    return adapter


def role_of(dim: Dimension, role: type[R]) -> R | None:
    """What plays ``role`` for ``dim``: an adapter registered for its key, the dimension itself, or None."""
    adapter = _adapters.get((role, dim.key))
    if adapter is not None:
        return adapter
    return dim if isinstance(dim, role) else None


def with_role(role: type[R]) -> list[R]:
    """What plays ``role`` for every registered dimension, in their order; the first time a dimension has no
    player for it, a one-line note says it is skipped."""
    out = []
    for dim in dimensions():
        player = role_of(dim, role)
        if player is not None:
            out.append(player)
        elif (role, dim.key) not in _said:
            _said.add((role, dim.key))
            log.info("plan dimension %r does not implement %s: skipped there", dim.key, role.__name__)
    return out


def removed_modules(resolved: Mapping[str, Any]) -> tuple[str, ...]:
    """Every module name the resolved parts of a plan (``{dimension key: part}``) remove."""
    out: list[str] = []
    for dim in dimensions():
        player = role_of(dim, Removing)
        if player is not None and resolved.get(dim.key) is not None:
            out.extend(player.removed(resolved[dim.key]))
    return tuple(out)


def inside(name: str, modules: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``modules`` or inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def voided(plan: Plan, removed: tuple[str, ...], after: int) -> Plan:
    """``plan`` with the entries of every dimension ordered after ``after`` on layers inside ``removed`` dropped."""
    if not removed:
        return plan
    changes: dict[str, dict[str, Any]] = {}
    for dim in dimensions():
        if dim.order <= after:
            continue
        for key in dim.keys:
            entries = plan.entries(key)
            kept = {k: v for k, v in entries.items() if not inside(str(k), removed)}
            if len(kept) != len(entries):
                changes[key] = kept
    return plan.replace(**changes) if changes else plan
