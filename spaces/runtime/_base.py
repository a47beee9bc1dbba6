"""The contract of a latency runtime: how a whole model, one layer, and a model's layers in context are timed.

A *runtime* is where the device profile (:mod:`spaces.cost._latency`), the
latency evaluator and the front's measurement time a model: torch's eager
mode (``"torch"``, :mod:`spaces.runtime._eager`), ONNX Runtime on the CPU
(``"onnxruntime"``, :mod:`spaces.runtime._ort`), or whatever a plug-in adds.
It says how to call a model and one conv or linear layer, how to time each
layer inside the whole model (the profile's in-context ratios), and the
channel block of its fast kernels. Timing itself (warm-up, runs, the median)
is the caller's :class:`Timing`, the same for every runtime. A new runtime is
one module with a :class:`Runtime` subclass and one line in
:mod:`spaces.runtime._registry` (or an entry point in the group
``prunetune.runtimes``); ``evaluate.runtime`` then names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Runtime", "Timing"]


class Timing(Protocol):
    """What a runtime times with: the untimed warm-up calls, the timed calls (ms), a device sync, the median."""

    warmup: int

    def times(self, fn: Callable[[], Any]) -> list[float]: ...

    def sync(self) -> None: ...

    def __call__(self, fn: Callable[[], Any]) -> float: ...


class Runtime(ABC):
    """One latency runtime (see the module docs)."""

    name: ClassVar[str]  # its name in the registry and in ``evaluate.runtime``

    def check(self, device: torch.device, inputs: tuple[Any, ...] = ()) -> None:
        """A one-line ValueError unless the runtime can time on ``device`` here (installed, the right device),
        and a model taking ``inputs`` (when given); by default it can."""
        return None

    @abstractmethod
    def model_call(self, model: nn.Module, inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
        """A call of the whole ``model`` on ``inputs``."""

    @abstractmethod
    def layer_call(self, layer: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
        """A call of one conv or linear ``layer`` (or a factor chain of them, an ``nn.Sequential``) on ``x``."""

    @abstractmethod
    def in_context(
        self, model: nn.Module, inputs: tuple[Any, ...], layers: Collection[str], threads: int, timing: Timing
    ) -> tuple[float, dict[str, float]]:
        """``model``'s median time (ms) run whole, and each of ``layers``' own time (ms) inside it."""

    def channel_block(self) -> int:
        """The channel block of the runtime's fast convolutions on this machine (1: none)."""
        return 1
