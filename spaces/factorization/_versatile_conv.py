"""The versatile convolution module the ``versatile`` methods put in place of a layer (see
:mod:`spaces.factorization._versatile` for the method, its cost and its fit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from spaces.factorization._versatile import VersatileFit

__all__ = ["VersatileConv2d"]


class VersatileConv2d(nn.Module):
    """``p`` primary filters ``[p, c_hat, kh, kw]`` (one parameter) and the slots that cut secondaries from them.

    Slot ``k`` is (ring, first input channel, primaries): its outputs are the
    primaries' centred ``(kh - 2 ring) x (kw - 2 ring)`` parts applied to input
    channels ``[c0, c0 + c_hat)``. The slots' outputs are concatenated and put
    back in the original channel order (``order``); the bias is one per output.
    """

    order: torch.Tensor

    def __init__(
        self, src: nn.Conv2d, primaries: torch.Tensor, slots: list[tuple[int, int, list[int]]], order: list[int]
    ):
        super().__init__()
        self.in_channels, self.out_channels = src.in_channels, src.out_channels
        self.kernel_size, self.stride, self.dilation = src.kernel_size, src.stride, src.dilation
        if isinstance(src.padding, str):
            raise ValueError(f"layer with padding={src.padding!r} cannot take versatile filters")
        self.padding = tuple(src.padding)
        self.weight = nn.Parameter(primaries)
        self.bias = nn.Parameter(src.bias.detach().clone()) if src.bias is not None else None
        self.rings = [ring for ring, _, _ in slots]
        self.starts = [c0 for _, c0, _ in slots]
        for k, (_, _, idx) in enumerate(slots):
            self.register_buffer(f"slot{k}", torch.tensor(idx, dtype=torch.long, device=primaries.device))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long, device=primaries.device))

    @classmethod
    @torch.no_grad()
    def from_fit(cls, src: nn.Conv2d, fit: VersatileFit) -> VersatileConv2d:
        """The module realising ``fit`` in place of ``src`` (on its dtype and device)."""
        like = src.weight
        primaries = torch.as_tensor(fit.primaries).to(device=like.device, dtype=like.dtype)
        slots, position, pos = [], 0, [0] * len(fit.assign)
        for k, (ring, window, _) in enumerate(fit.slots):
            outputs = [o for o in range(len(fit.assign)) if fit.assign[o, 0] == k]
            for o in outputs:
                pos[o], position = position, position + 1
            slots.append((ring, fit.window_start(window), [int(fit.assign[o, 1]) for o in outputs]))
        return cls(src, primaries, slots, pos)

    def primaries_of(self, k: int) -> torch.Tensor:
        """The primary of each output of slot ``k``, in the slot's output order."""
        index: torch.Tensor = self.get_buffer(f"slot{k}")
        return index

    def _slot(self, x: torch.Tensor, k: int) -> torch.Tensor:
        ring, c0 = self.rings[k], self.starts[k]
        c_hat, kh, kw = self.weight.shape[1:]
        w = self.weight[self.primaries_of(k), :, ring : kh - ring, ring : kw - ring]
        x = x[:, c0 : c0 + c_hat]
        pads = [p - ring * d for p, d in zip(self.padding, self.dilation, strict=True)]
        crop_h, crop_w = max(0, -pads[0]), max(0, -pads[1])
        if crop_h or crop_w:  # the centred filter would need negative padding: crop the input instead
            x = x[:, :, crop_h : x.shape[2] - crop_h, crop_w : x.shape[3] - crop_w]
        return F.conv2d(x, w, None, self.stride, (max(0, pads[0]), max(0, pads[1])), self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self._slot(x, k) for k in range(len(self.rings))], dim=1).index_select(1, self.order)
        return y if self.bias is None else y + self.bias[None, :, None, None]

    @torch.no_grad()
    def expanded_weight(self) -> torch.Tensor:
        """The equivalent dense kernel ``[C_out, C_in, kh, kw]``: a plain convolution with it gives the same outputs."""
        c_hat, kh, kw = self.weight.shape[1:]
        out = self.weight.new_zeros(self.out_channels, self.in_channels, kh, kw)
        concat = 0
        rows = []
        for k, (ring, c0) in enumerate(zip(self.rings, self.starts, strict=True)):
            for j in self.primaries_of(k).tolist():
                rows.append((concat, ring, c0, j))
                concat += 1
        where = {c: o for o, c in enumerate(self.order.tolist())}
        for c, ring, c0, j in rows:
            out[where[c], c0 : c0 + c_hat, ring : kh - ring, ring : kw - ring] = self.weight[
                j, :, ring : kh - ring, ring : kw - ring
            ]
        return out

    def extra_repr(self) -> str:
        p, c_hat = self.weight.shape[:2]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, primaries={p}, "
            f"c_hat={c_hat}, slots={len(self.rings)}, stride={self.stride}, padding={self.padding}"
        )
