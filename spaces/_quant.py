"""Simulated quantization: what a quantized layer computes, in floating point, with straight-through gradients.

PruneTune's own fake quantizer (it does not build on ``torch.ao.quantization``,
whose export flow was removed in torch 2.11 and whose eager API is deprecated).
A plan's ``bits`` dimension (:mod:`spaces.dimensions._bits`) turns a
``Conv2d`` or ``Linear`` into :class:`QuantConv2d` / :class:`QuantLinear` in
place (:func:`quantize_layer`): the same parameters under the same names, so
weights files, distillation and BN recalibration work as before, and the
forward pass computes with quantized values:

* **weights**: symmetric, per output channel. For ``b`` bits,
  ``q_max = 2^(b-1) - 1``, the scale of channel ``c`` is ``max|W_c| / q_max``
  and ``Ŵ = clamp(round(W / scale), -q_max, q_max) * scale`` (no value is
  clipped: the scale covers the channel's largest weight). The zero point is 0.
* **activations** (``act_bits = 8``): affine per tensor, on the layer's input,
  unsigned 8 bits: ``scale = (hi - lo) / 255`` over a range ``[lo, hi]`` that
  contains 0, ``zero = round(-lo / scale)``,
  ``x̂ = (clamp(round(x / scale) + zero, 0, 255) - zero) * scale``. The range
  is observed in training mode (the first batch sets it, later batches move it
  by an exponential average with momentum 0.1, as BatchNorm's statistics), so
  BN recalibration batches calibrate it and a fine-tune keeps it current; in
  evaluation mode it is frozen. It is kept as buffers (``act.lo``, ``act.hi``,
  ``act.seen``), so a weights file carries it.
* **gradients**: straight through (the quantizer's rounding passes gradients
  unchanged; an activation outside ``[lo, hi]`` gets none, as it is clipped),
  so a candidate is fine-tuned *through* its quantization.

Exactly this arithmetic is what an int8 runtime computes (ONNX Runtime's QDQ
with per-channel symmetric weights and per-tensor uint8 activations), up to
the accumulator's rounding.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActQuant",
    "QuantConv2d",
    "QuantLinear",
    "dequantized",
    "fake_quant_weight",
    "is_quantizable",
    "quantize_layer",
]

ACT_MOMENTUM = 0.1


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` quantized symmetrically per output channel (dim 0) at ``bits``, straight-through gradients."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = (amax / qmax).view(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return w + (q - w).detach()


class ActQuant(nn.Module):
    """Affine per-tensor fake quantization of a layer's input, its range observed in training mode."""

    lo: torch.Tensor
    hi: torch.Tensor
    seen: torch.Tensor

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x.detach())
        levels = 2**self.bits - 1
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        scale = ((hi - lo) / levels).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale
        clipped = torch.clamp(x, lo, hi)  # no gradient where clipped
        # never calibrated: nothing to quantize against (a select, not a branch: the graph exports as it is)
        return torch.where(self.seen, clipped + (q - clipped).detach(), x)

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min(), x.max()
        with torch.no_grad():
            if bool(self.seen):
                self.lo.lerp_(lo, ACT_MOMENTUM)
                self.hi.lerp_(hi, ACT_MOMENTUM)
            else:
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)


class QuantConv2d(nn.Conv2d):
    """A ``Conv2d`` that computes with ``weight_bits`` weights (and 8-bit inputs when ``act`` is set)."""

    weight_bits: int
    act: ActQuant | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return self._conv_forward(x, fake_quant_weight(self.weight, self.weight_bits), self.bias)


class QuantLinear(nn.Linear):
    """A ``Linear`` that computes with ``weight_bits`` weights (and 8-bit inputs when ``act`` is set)."""

    weight_bits: int
    act: ActQuant | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, fake_quant_weight(self.weight, self.weight_bits), self.bias)


_QUANTIZED: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def is_quantizable(layer: nn.Module) -> bool:
    """Whether ``layer`` is a plain ``Conv2d`` or ``Linear`` (subclasses are someone else's forward)."""
    return type(layer) in _QUANTIZED


def quantize_layer(layer: nn.Module, bits: int, act_bits: int | None = None) -> nn.Module:
    """Make ``layer`` (a plain ``Conv2d`` / ``Linear``) compute quantized, in place; returns it.

    Its class becomes the quantized subclass, so its parameters, names and
    hooks stay; an ``act`` submodule holds the activation range when
    ``act_bits`` is given.
    """
    cls = _QUANTIZED.get(type(layer))
    if cls is None:
        raise TypeError(f"only Conv2d and Linear layers can be quantized, got {type(layer).__name__}")
    weight = cast("torch.Tensor", layer.weight)
    layer.__class__ = cls
    setattr(layer, "weight_bits", int(bits))  # noqa: B010 (the attribute is the quantized class's)
    setattr(layer, "act", ActQuant(act_bits).to(weight.device) if act_bits else None)  # noqa: B010
    return layer


def dequantized(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[int, tuple[float, float] | None]]]:
    """A float copy of ``model`` whose quantized layers are plain layers holding their quantized weights (on their
    grid), and per such layer its weight bits and its observed input range (``None`` where inputs are not quantized
    or never calibrated): what an int8 runtime is handed (``prunetune export --format onnx --int8``)."""
    import copy

    out = copy.deepcopy(model).eval()
    layers: dict[str, tuple[int, tuple[float, float] | None]] = {}
    for name, mod in out.named_modules():
        if not isinstance(mod, QuantConv2d | QuantLinear):
            continue
        act = mod.act
        rng = (min(float(act.lo), 0.0), max(float(act.hi), 0.0)) if act is not None and bool(act.seen) else None
        layers[name] = (mod.weight_bits, rng)
        with torch.no_grad():
            mod.weight.copy_(fake_quant_weight(mod.weight, mod.weight_bits))
        plain: type[nn.Module] = nn.Conv2d if isinstance(mod, QuantConv2d) else nn.Linear
        mod.__class__ = plain  # type: ignore[assignment]
        del mod.act, mod.weight_bits
    return out, layers
