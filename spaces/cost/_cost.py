"""``Cost`` and ``measure_cost``: what a model costs, measured on a built model.

What is counted, exactly:

* **MACs**: multiply-accumulates of convolutions (``aten::_convolution``) and
  linear layers (``aten::linear``, ``aten::addmm``), counted by fvcore on one
  forward pass of ``example_inputs`` (the whole batch as given). A convolution
  costs ``N * H_out * W_out * C_out * C_in / groups * k_h * k_w``, a linear
  layer ``prod(input.shape[:-1]) * in_features * out_features``; products
  between activations (``aten::matmul``, ``aten::bmm``, ``aten::baddbmm``,
  ``aten::einsum``, ``aten::scaled_dot_product_attention`` and PyTorch's fused
  ``aten::_native_multi_head_attention``) by the formulas of
  :func:`spaces.graph._attention.product_macs` (an attention's ``Q @ K^T`` and
  weighted sum of ``V`` included). Every other op (BatchNorm, pooling,
  activations, additions, softmax, ...) is *not* counted; the ops
  fvcore saw and skipped are listed in :attr:`Cost.skipped_ops`.
* **params**: the number of elements of ``model.parameters()`` (buffers such as
  BatchNorm running statistics are not parameters).
* **bytes**: the parameters' storage, ``numel * element_size`` summed; a
  quantized layer's weight (a layer with a ``weight_bits`` attribute, see
  :mod:`spaces._quant`) counts ``ceil(numel * bits / 8)`` bytes (4-bit values
  packed two to a byte) plus, per output channel, a float32 scale and a one-byte
  zero point (:func:`quantized_bytes`). Activation quantization parameters and
  buffers are not counted.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["COUNTED_OPS", "Cost", "measure_cost", "parameter_bytes", "quantized_bytes"]

COUNTED_OPS = (
    "aten::_convolution",
    "aten::linear",
    "aten::addmm",
    "aten::matmul",
    "aten::bmm",
    "aten::baddbmm",
    "aten::scaled_dot_product_attention",
    "aten::_native_multi_head_attention",
    "aten::einsum",
)
CHANNEL_QPARAM_BYTES = 4 + 1  # per output channel of a quantized weight: a float32 scale, a one-byte zero point


def quantized_bytes(numel: int, out_channels: int, bits: int) -> int:
    """Storage of a weight of ``numel`` elements at ``bits`` per element with per-output-channel scales."""
    return -(-numel * bits // 8) + out_channels * CHANNEL_QPARAM_BYTES


def parameter_bytes(model: nn.Module) -> int:
    """The bytes of ``model``'s parameters, a quantized layer's weight at its bit width (see the module docs)."""
    quantized = {}
    for mod in model.modules():
        bits = getattr(mod, "weight_bits", None)
        if bits:
            w = cast("torch.Tensor", mod.weight)
            quantized[id(w)] = quantized_bytes(w.numel(), w.shape[0], int(bits))
    return sum(quantized.get(id(p), p.numel() * p.element_size()) for p in model.parameters())


@dataclass(frozen=True)
class Cost:
    """MACs, parameter count and parameter bytes of a model (see module doc)."""

    macs: int
    params: int
    bytes: int
    skipped_ops: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    # predicted batch latency in ms, from the space's device profile (None: no profile, or not predictable)
    latency: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params, "bytes": self.bytes}

    def ratio(self, base: Cost) -> dict[str, float]:
        """Each figure as a fraction of ``base``'s."""
        return {
            k: (v / b if b else 0.0) for (k, v), b in zip(self.as_dict().items(), base.as_dict().values(), strict=False)
        }


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple of inputs (a lone tensor becomes a 1-tuple)."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _product_handles() -> dict[str, Any]:
    """fvcore handles for the products between activations (see the module docs)."""
    from fvcore.nn.jit_handles import get_shape

    from spaces.graph._attention import product_macs

    def handle(op: str, operands: tuple[int, ...], **extra: Any) -> Any:
        def count(inputs: list[Any], outputs: list[Any]) -> int:
            shapes = [get_shape(inputs[i]) for i in operands]
            return product_macs(op, shapes, get_shape(outputs[0]), extra)

        return count

    def einsum(inputs: list[Any], outputs: list[Any]) -> int:
        operands = [get_shape(v) for v in inputs[1].node().inputs()]
        return product_macs("einsum", operands, get_shape(outputs[0]), {"equation": inputs[0].toIValue()})

    return {
        "aten::matmul": handle("matmul", (0, 1)),
        "aten::bmm": handle("bmm", (0, 1)),
        "aten::baddbmm": handle("baddbmm", (0, 1, 2)),
        "aten::scaled_dot_product_attention": handle("sdpa", (0, 1, 2)),
        "aten::_native_multi_head_attention": handle("mha", (0, 1, 5, 7), batch_first=True),
        "aten::einsum": einsum,
    }


def measure_cost(model: nn.Module, example_inputs: Any) -> Cost:
    """Measure ``model``'s cost with fvcore (MACs) and parameter counting."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore's import touches torch.jit
        from fvcore.nn.jit_analysis import JitModelAnalysis
        from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit

    inputs = as_tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        # Count exactly conv, linear and the products between activations; everything else is reported as skipped.
        analysis = JitModelAnalysis(model, inputs).set_op_handle(
            **{"aten::_convolution": conv_flop_jit, "aten::linear": linear_flop_jit, "aten::addmm": addmm_flop_jit},
            **_product_handles(),
        )
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        fv_logger = logging.getLogger("fvcore.nn.jit_analysis")
        level = fv_logger.level
        fv_logger.setLevel(logging.ERROR)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit deprecation notices
                macs = int(analysis.total())
                skipped = Counter(analysis.unsupported_ops())
        finally:
            fv_logger.setLevel(level)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Cost(macs=macs, params=params, bytes=parameter_bytes(model), skipped_ops=dict(skipped))
