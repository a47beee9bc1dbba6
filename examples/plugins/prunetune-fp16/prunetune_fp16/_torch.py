"""The surgery of ``fp16``: a layer's weight stored as float16, cast to float32 in the forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["AsFloat", "store_half"]


class AsFloat(nn.Module):
    """The parametrization: the stored (float16) weight as float32."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.float()


def store_half(layer: nn.Module) -> None:
    """Store ``layer.weight`` as a float16 parameter behind :class:`AsFloat` (in place)."""
    with torch.no_grad():
        half = nn.Parameter(layer.weight.detach().to(torch.float16))
    del layer.weight
    layer.weight = half
    parametrize.register_parametrization(layer, "weight", AsFloat(), unsafe=True)
