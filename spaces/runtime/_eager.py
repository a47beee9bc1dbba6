"""torch's eager mode as a latency runtime (``"torch"``): the model and its layers called as they are.

Each layer's own time inside the whole model is read by a forward pre-hook
and a forward hook around it (after a device sync on CUDA); a module called
twice in a pass counts both calls.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from spaces.runtime._base import Runtime, Timing

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TorchRuntime", "hooked_times"]


class TorchRuntime(Runtime):
    name = "torch"

    def model_call(self, model: nn.Module, inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
        return lambda: model(*inputs)

    def layer_call(self, layer: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
        return lambda: layer(x)

    def in_context(
        self, model: nn.Module, inputs: tuple[Any, ...], layers: Collection[str], threads: int, timing: Timing
    ) -> tuple[float, dict[str, float]]:
        return timing(self.model_call(model, inputs, threads)), hooked_times(model, inputs, layers, timing)


def hooked_times(
    model: nn.Module, inputs: tuple[Any, ...], layers: Collection[str], timing: Timing
) -> dict[str, float]:
    """Each of ``layers``' own time (ms) inside ``model``'s forward pass, the median over ``timing``'s timed runs
    (layers the model does not have are left out)."""
    runs: list[dict[str, float]] = []
    started: dict[str, float] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            timing.sync()
            started[name] = time.perf_counter()

        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            timing.sync()
            runs[-1][name] = runs[-1].get(name, 0.0) + 1000.0 * (time.perf_counter() - started[name])

        return hook

    handles = []
    for name in layers:
        with contextlib.suppress(AttributeError):
            mod = model.get_submodule(name)
            handles += [mod.register_forward_pre_hook(before(name)), mod.register_forward_hook(after(name))]

    def call() -> None:
        runs.append({})
        model(*inputs)

    try:
        timing.times(call)
    finally:
        for h in handles:
            h.remove()
    timed = runs[timing.warmup :]
    return {name: statistics.median(run[name] for run in timed) for name in timed[0]}
