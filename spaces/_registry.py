"""One generic registry for every extension point: names to plug-ins, built-ins imported when first needed.

PruneTune's extension points (plan dimensions, factorization methods, search
drivers, report panels, ...) are each a :class:`Registry` of one contract. A
registry holds three kinds of entries:

* **built-ins**, registered by module path (``"spaces.dimensions._rank:RankDimension"``)
  and imported on first use, so that ``import spaces`` stays light and naming
  a plug-in (validating a plan or a config) stays torch-free;
* **registrations** made in code, with one line: ``REGISTRY.register(obj)``;
* **entry points** of packages installed beside PruneTune, in the registry's
  group (``prunetune.dimensions``, ``prunetune.methods``, ...), read once, the
  first time the registry is asked for a name. An entry point names a class,
  an instance, or a function that returns one (``my_pkg.dims:Fp16Dimension``).

The name of an entry is read from the plug-in (``obj.key`` for dimensions,
``obj.name`` for the others: the registry's ``name_attr``). A plug-in that does
not implement the registry's contract is refused with a one-line
``TypeError``; an unknown name is a one-line error (the registry's ``error``
class, e.g. :class:`~spaces.PlanError`) that lists the registered names.

An entry point that fails to import is not fatal: the registry keeps the
others, and :meth:`Registry.problems` says which one failed and why (the
``prunetune doctor``-style check a plug-in author runs first). This module is
torch-free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to plug-ins of one contract ``base`` (see the module docs).

    Args:
        kind: what an entry is, for messages ("plan dimension", "search driver").
        base: the contract every entry must be an instance of.
        group: the entry-point group read for installed plug-ins (None: none).
        builtins: name to ``"module:attr"``, imported on first use.
        name_attr: the attribute an entry is named by.
        error: the exception class of an unknown name (one line, listing the names).
        what: how an unknown name is described in that message (default: ``kind``).
    """

    def __init__(
        self,
        kind: str,
        base: type[T],
        *,
        group: str | None = None,
        builtins: dict[str, str] | None = None,
        name_attr: str = "name",
        error: type[Exception] = KeyError,
        what: str | None = None,
    ) -> None:
        self.kind, self.base, self.group, self.name_attr = kind, base, group, name_attr
        self.error, self.what = error, what or kind
        self._entries: dict[str, T | str] = dict(builtins or {})
        self.builtins = tuple(builtins or {})  # the names PruneTune itself registers (not plug-ins)
        self._plugins_read = group is None
        self._problems: dict[str, str] = {}
        self.on_change: list[Callable[[], None]] = []  # caches built on the registry (emptied on every change)

    # ------------------------------------------------------------ registration
    def register(self, obj: T | type[T] | Callable[[], T], *, replace: bool = False, before: str | None = None) -> T:
        """Add ``obj`` (an instance, a class, or a function returning one) under its name; returns the instance.

        A name already registered is a ``ValueError`` unless ``replace``. The
        entry goes last in the registry's order, or just before the entry
        named ``before`` (where order matters: the report's panels).
        """
        inst = self.instance(obj)
        name = self.name_of(inst)
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to replace it)")
        self._entries[name] = inst
        if before is not None and before in self._entries and before != name:
            names = [n for n in self._entries if n != name]
            names.insert(names.index(before), name)
            self._entries = {n: self._entries[n] for n in names}
        self._changed()
        return inst

    def unregister(self, name: str) -> None:
        """Remove the entry registered as ``name`` (an unknown name is the registry's one-line error)."""
        self._read_plugins()
        if name not in self._entries:
            raise self.error(f"no {self.kind} {name!r}; registered: {', '.join(self._entries)}")
        del self._entries[name]
        self._changed()

    def name_of(self, inst: T) -> str:
        name = getattr(inst, self.name_attr, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty str {self.name_attr!r}, got {name!r}")
        return name

    # ------------------------------------------------------------ lookup
    def get(self, name: str) -> T:
        """The entry registered as ``name``, imported now if it is a built-in's path."""
        self._read_plugins()
        entry = self._entries.get(name)
        if entry is None:
            raise self.error(f"{self.what} must be one of {', '.join(self._entries)}, got {name!r}")
        if isinstance(entry, str):
            entry = self._entries[name] = self.instance(_load(entry))
        return entry

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (built-ins first, then entry points)."""
        self._read_plugins()
        return tuple(self._entries)

    def loaded(self) -> list[T]:
        """Every entry, each imported now, in registration order."""
        return [self.get(name) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def problems(self) -> dict[str, str]:
        """The entry points that could not be loaded, with why (empty when all loaded)."""
        self._read_plugins()
        return dict(self._problems)

    # ------------------------------------------------------------ internals
    def instance(self, obj: Any) -> T:
        inst = obj() if isinstance(obj, type) or (callable(obj) and not isinstance(obj, self.base)) else obj
        if not isinstance(inst, self.base):
            raise TypeError(f"a {self.kind} must be a {self.base.__qualname__}, got {type(inst).__name__}")
        return inst

    def _read_plugins(self) -> None:
        """Register the entry points of the registry's group (once; a failing one goes to :meth:`problems`)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        assert self.group is not None
        for ep in metadata.entry_points(group=self.group):
            try:
                inst = self.instance(ep.load())
                name = self.name_of(inst)
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
            except Exception as exc:  # a broken plug-in must not break the others
                self._problems[ep.value] = f"{type(exc).__name__}: {exc}"
                continue
            self._entries[name] = inst
        self._changed()

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
