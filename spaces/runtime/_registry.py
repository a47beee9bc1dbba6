"""The registry of latency runtimes (a :class:`~spaces.Registry`, entry-point group ``prunetune.runtimes``).

The built-in runtimes are registered by module path and imported when first
used, so naming them (a config's ``evaluate.runtime``) stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spaces._registry import Registry
from spaces.runtime._base import Runtime

if TYPE_CHECKING:
    import torch

__all__ = ["RUNTIMES", "RUNTIME_REGISTRY", "check_runtime", "register_runtime", "runtime", "runtime_names"]

RUNTIME_REGISTRY: Registry[Runtime] = Registry(
    "latency runtime",
    Runtime,
    group="prunetune.runtimes",
    builtins={"torch": "spaces.runtime._eager:TorchRuntime", "onnxruntime": "spaces.runtime._ort:OnnxRuntime"},
    name_attr="name",
    error=ValueError,
    what="runtime",
)
RUNTIMES = RUNTIME_REGISTRY.builtins  # the built-in runtimes' names


def register_runtime(rt: Runtime | type[Runtime], *, replace: bool = False) -> Runtime:
    """Add a runtime under its ``name`` (``replace=True`` replaces one of that name)."""
    return RUNTIME_REGISTRY.register(rt, replace=replace)


def runtime_names() -> tuple[str, ...]:
    return RUNTIME_REGISTRY.names()


def runtime(name: str) -> Runtime:
    """The runtime registered as ``name`` (a one-line ValueError naming the known ones otherwise)."""
    return RUNTIME_REGISTRY.get(name)


def check_runtime(name: str, device: torch.device | str = "cpu", inputs: tuple[Any, ...] = ()) -> None:
    """A one-line error unless ``name`` is a registered runtime, usable on ``device`` (and a model taking
    ``inputs``, when given) and installed here."""
    import torch

    runtime(name).check(torch.device(device), inputs)
