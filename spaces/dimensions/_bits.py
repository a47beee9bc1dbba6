"""Per-layer weight bit widths as a plan dimension: ``bits = {layer: 8 | 4}``, ``act_bits = {layer: 8}``.

A layer named in ``bits`` (a plain ``Conv2d`` or ``Linear`` the forward pass
calls) computes with its weights quantized symmetrically per output channel
at that width (absent: float32), and with ``act_bits`` its input quantized to
8 bits per tensor (:mod:`spaces._quant`, the simulated quantizer candidates are
fine-tuned through). Bits are resolved on the pruned shape: a quantized weight
costs ``ceil(numel * bits / 8)`` bytes plus a float32 scale and a one-byte zero
point per output channel (:func:`spaces.quantized_bytes`); MACs and the
parameter count do not change. Quantization applies to dense layers: a layer
with both a rank and bits is a one-line error.

``fit`` holds the bits and moves the pruning: a bytes budget that the bits
alone do not meet is met by pruning more (the allocator, which trades bits
and channels in one program, is the way to let bits go first).

In the allocator (``allocate(..., bits=True)``, ``act_bits=True`` for 8-bit
inputs) every quantizable layer is at 4 bits and may take one step to 8: a
chain of one variable whose cost is the bytes the step adds at the point's
pruned shape, and whose value is the loss rise it avoids, measured with the
layer alone at 4 and at 8 bits (:meth:`BitsDimension.sensitivity_plans`,
in the sensitivity table's unit, so channels and bits trade one for one). With
no measured table the value is the drop in the layer's relative weight error
(``|W - Q(W)|² / |W|²``): the share of the layer's weight energy that 4-bit
noise takes and 8 bits give back, read in the unit of a group's importance
shares (the share of its squared magnitude a pruned block takes).

The sampler gets one parameter, not one per layer (Optuna's TPE learns a few
meaningful knobs from 30 candidates, not hundreds): ``bits:share4``, the
share of the eligible layers' weights at 4 bits on the grid 0, 1/8, ..., 1;
every other quantizable layer is at 8 bits. The layers that go to 4 bits
first are the largest (the most bytes saved per layer), never the first and
the last layer (the input convolution and the classifier, which the
literature and every int8 runtime keep at 8 bits or more). With
``space.quantize = "weights+activations"`` every quantized layer also gets
8-bit inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from spaces._errors import InputTypeError, PlanError
from spaces.cost._cost import quantized_bytes
from spaces.dimensions._base import AllocPoint, Block, CostState, Dimension, Entries, ParamSpec, StructureRow
from spaces.dimensions._roles import Allocated, Measured, Reported, Sampled

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces.cost._costmodel import CostModel
    from spaces.graph._surgery import Surgery

__all__ = ["WEIGHT_BITS", "BitsDimension", "BitsOptions", "quantizable_layers"]

WEIGHT_BITS = (4, 8)  # the widths a plan may give a layer's weights (absent: float32)
ACT_BITS = (8,)
QUANTIZE_MODES = ("none", "weights", "weights+activations")
_SHARE_STEP = 0.125


def _check_bits(key: str, layer: Any, bits: Any, offered: tuple[int, ...]) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InputTypeError(f"{key} of layer {layer!r} must be an int, one of {offered}, got {bits!r}")
    if bits not in offered:
        raise PlanError(f"{key} of layer {layer!r} must be one of {offered} (absent: float32), got {bits}")
    return bits


def quantizable_layers(costs: CostModel) -> dict[str, int]:
    """The plain ``Conv2d`` / ``Linear`` layers the forward pass calls, in its order, with their weight's size.

    A layer whose weight is also applied outside its forward (``F.linear(x, layer.weight)``) is not one: its
    quantized forward would not run there.
    """
    from spaces._quant import is_quantizable  # torch

    model = costs.trace.model
    out = {}
    for name in costs.trace.spatial:
        mod = model.get_submodule(name) if name else model
        if is_quantizable(mod) and hasattr(mod, "weight") and name not in costs.trace.functional_layers:
            out[name] = sum(p.numel() for n, p in mod.named_parameters(recurse=False) if n == "weight")
    return out


def _four_bit_order(costs: CostModel) -> list[str]:
    """The layers that take 4 bits first: the largest, never the first or the last layer of the forward pass."""
    layers = quantizable_layers(costs)
    names = list(layers)[1:-1]
    return sorted(names, key=lambda n: (-layers[n], names.index(n)))


class BitsOptions(BaseModel):
    """Per-layer weight bit widths searched beside the pruning: every conv and linear layer at 8 or 4 bits."""

    model_config = ConfigDict(extra="forbid")
    activations: bool = Field(
        False, description="also quantize each quantized layer's input to 8 bits (static, per tensor)"
    )

    # the flat [space] keys of older configs this table reads (see search._config): key -> where it went
    flat_keys: ClassVar[dict[str, str]] = {"quantize": '(present: bits searched; "weights+activations": activations)'}

    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, present: bool) -> dict[str, Any] | None:
        """The table ``quantize`` asks for: none (off), weights, or weights+activations."""
        mode = flat["quantize"]
        if mode not in QUANTIZE_MODES:
            raise ValueError(f"space.quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
        return None if mode == "none" else {"activations": mode == "weights+activations"}

    @property
    def mode(self) -> str:
        """The quantization mode: ``"weights"`` or ``"weights+activations"``."""
        return "weights+activations" if self.activations else "weights"


class BitsDimension(Dimension, Sampled, Allocated, Measured, Reported):
    key = "bits"
    extra_keys = ("act_bits",)
    describe: ClassVar[dict[str, str]] = {"bits": "layer to weight bits", "act_bits": "layer to input bits"}
    order = 20  # after pruning and factorization: it quantizes the layers they leave
    conflicts: ClassVar[dict[str, str]] = {"rank": "a factorized layer is not quantized"}
    options = BitsOptions

    def normalize(self, values: Entries) -> Entries:
        bits = {str(k): _check_bits("bits", k, v, WEIGHT_BITS) for k, v in values["bits"].items()}
        act = {str(k): _check_bits("act_bits", k, v, ACT_BITS) for k, v in values["act_bits"].items()}
        for layer in act:
            if layer not in bits:
                raise PlanError(f"layer {layer!r} has act_bits but no bits (quantized inputs need quantized weights)")
        return {"bits": bits, "act_bits": act}

    def resolve(self, costs: CostModel, plan: Plan, keep: np.ndarray) -> Any | None:
        """Per quantized layer: ``(weight bits, input bits or None)``, after checking it can be quantized."""
        bits = plan.entries("bits")
        if not bits:
            return None
        layers = quantizable_layers(costs)
        ranks = plan.entries("rank")
        act = plan.entries("act_bits")
        for name in bits:
            if name not in layers:
                raise PlanError(_not_quantizable(costs, name, layers))
            if name in ranks:
                raise PlanError(f"layer {name!r} has both a rank and bits: only a dense layer can be quantized")
        return {name: (int(b), act.get(name)) for name, b in bits.items()}

    def add_cost(self, costs: CostModel, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        for name, (bits, _) in resolved.items():
            shape = costs.weight_shape(name, keep)
            assert shape is not None  # resolve checked the layer
            numel = math.prod(shape)
            state.bytes += quantized_bytes(numel, shape[0], bits) - numel * costs.element_size(name)

    def apply(self, surgery: Surgery, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        from spaces._quant import quantize_layer  # torch

        for name, (bits, act) in resolved.items():
            quantize_layer(model.get_submodule(name), bits, act)

    def verify_probe(self, costs: CostModel) -> Entries:
        """The first quantizable layer at 4 bits with 8-bit inputs, the last at 8 bits."""
        layers = list(quantizable_layers(costs))
        if not layers:
            return {}
        return {"bits": {layers[0]: 4, layers[-1]: 8}, "act_bits": {layers[0]: 8}}

    # ------------------------------------------------------------ the sampler
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """With ``options["quantize"]`` other than ``"none"``: the share of the eligible weights at 4 bits."""
        mode = str(options.get("quantize", "none"))
        if mode not in QUANTIZE_MODES:
            raise PlanError(f"space.quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
        if mode == "none" or not quantizable_layers(space.costs):
            return {}
        return {"share4": ParamSpec(0.0, 1.0, step=_SHARE_STEP)}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        if "share4" not in values:
            return {}
        layers = quantizable_layers(space.costs)
        order = _four_bit_order(space.costs)
        target = float(values["share4"]) * sum(layers[n] for n in order)
        bits, done = dict.fromkeys(layers, 8), 0
        for name in order:
            if done >= target - 0.5:
                break
            bits[name], done = 4, done + layers[name]
        act = dict.fromkeys(layers, 8) if options.get("quantize") == "weights+activations" else {}
        return {"bits": bits, "act_bits": act}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        if "share4" not in specs:
            return {}
        layers = quantizable_layers(space.costs)
        order = _four_bit_order(space.costs)
        total = sum(layers[n] for n in order)
        four = sum(layers[n] for n in order if plan.entries("bits").get(n) == 4)
        return {"share4": round(round(four / total / _SHARE_STEP) * _SHARE_STEP, 10) if total else 0.0}

    def seed_entries(self, space: ModelSpace, options: Mapping[str, Any]) -> Entries:
        """With ``options["quantize"]`` on: every quantizable layer at 8 bits (the share at 4 bits is 0)."""
        if not self.params(space, options):
            return {}
        return self.from_params(space, {"share4": 0.0}, options)

    # ------------------------------------------------------------ the allocator
    def allocator_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``space.quantize``: weights (``bits=True``), and with weights+activations ``act_bits=True``."""
        mode = str(options.get("quantize", "none"))
        return {} if mode == "none" else {"bits": True, "act_bits": mode == "weights+activations"}

    def sensitivity_plans(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, dict[str, Entries]]:
        """With ``options["bits"]``: each quantizable layer alone at 4 and at 8 bits (inputs too with act_bits)."""
        if not options.get("bits"):
            return {}
        act = options.get("act_bits")
        return {
            name: {str(b): {"bits": {name: b}, "act_bits": {name: 8} if act else {}} for b in WEIGHT_BITS}
            for name in quantizable_layers(space.costs)
        }

    def allocator_blocks(self, space: ModelSpace, point: AllocPoint) -> list[Block]:
        """With ``options["bits"]``: per quantizable layer, 4 bits, and one step to 8 (see the module docs)."""
        import numpy as np

        if not point.options.get("bits"):
            return []
        now = point.resolved.get(self.key) or {}
        values = self._step_values(space, point)
        bytes_at = np.array([m == "bytes" for m in point.metrics], dtype=np.float64)  # bits move bytes only
        blocks = []
        for name in quantizable_layers(space.costs):
            shape = space.costs.weight_shape(name, point.keep)
            assert shape is not None
            numel, out = math.prod(shape), shape[0]
            four, eight = quantized_bytes(numel, out, 4), quantized_bytes(numel, out, 8)
            current = (
                quantized_bytes(numel, out, now[name][0]) if name in now else numel * space.costs.element_size(name)
            )
            step = Block(
                unit=name,
                values=[values[name]],
                costs=[(eight - four) * bytes_at],
                base_cost=(four - current) * bytes_at,
            )
            blocks.append(step)
        return blocks

    def _step_values(self, space: ModelSpace, point: AllocPoint) -> dict[str, float]:
        """What 8 bits over 4 are worth per layer: measured rises, else the relative weight error they remove."""
        if "bits_values" in point.cache:
            return point.cache["bits_values"]
        sens = point.options.get("sensitivity")
        layers = quantizable_layers(space.costs)
        rises = {n: sens.rises(self.key, n) for n in layers} if sens is not None else {}
        if sens is not None and rises and all(rises.values()):
            out = {n: max(r["4"] - r["8"], 0.0) / sens.scale for n, r in rises.items()}
        else:
            out = _weight_error_gain(space, layers)
        point.cache["bits_values"] = out
        return out

    def allocator_decode(self, space: ModelSpace, point: AllocPoint, choices: list[tuple[bool, int]]) -> None:
        if not choices:
            return
        act = 8 if point.options.get("act_bits") else None
        layers = quantizable_layers(space.costs)
        point.resolved[self.key] = {n: (8 if steps else 4, act) for n, (_, steps) in zip(layers, choices, strict=True)}

    def allocator_entries(self, space: ModelSpace, point: AllocPoint) -> Entries:
        resolved = point.resolved.get(self.key) or {}
        act = {n: a for n, (_, a) in resolved.items() if a}
        return {"bits": {n: b for n, (b, _) in resolved.items()}, "act_bits": act} if resolved else {}

    # ------------------------------------------------------------ the report
    def summary(self, plan: Plan, limit: int) -> str | None:
        bits = plan.entries("bits")
        if not bits:
            return None
        counts = {b: sum(1 for v in bits.values() if v == b) for b in sorted(set(bits.values()), reverse=True)}
        text = ", ".join(f"{n} at {b} bits" for b, n in counts.items())
        return f"{text}{', 8-bit inputs' if plan.entries('act_bits') else ''}"

    def export_notes(self, plan: Plan) -> dict[str, Any] | None:
        """The quantized layers, their widths, and the scheme (what ``model.json`` says was quantized and how)."""
        bits = plan.entries("bits")
        if not bits:
            return None
        act = plan.entries("act_bits")
        return {
            "weights": "symmetric per output channel: scale max|W_c| / (2^(bits-1) - 1), zero point 0",
            "weight_bits": dict(bits),
            "inputs": "unsigned 8-bit affine per tensor, range observed in training mode (buffers act.lo, act.hi)"
            if act
            else "float32",
            "input_bits": dict(act),
            "float32_layers": "every conv and linear layer not in weight_bits",
            "weights_file": "float32 weights; the layers quantize them in the forward pass (prunetune export "
            "--format onnx --int8 writes them as int8 / packed int4)",
            "4_bit_speed": "memory only: no fast 4-bit convolution kernel on CPU runtimes",
        }

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        bits = plan.entries("bits")
        if not bits:
            return []
        layers = quantizable_layers(space.costs)
        return [StructureRow("weight bits", name, int(bits.get(name, 32)), 32) for name in layers]


def _weight_error_gain(space: ModelSpace, layers: Mapping[str, int]) -> dict[str, float]:
    """Per layer, the relative weight error (|W - Q(W)|² / |W|²) that 8 bits remove against 4."""
    import torch

    from spaces._quant import fake_quant_weight  # torch

    gain = {}
    with torch.no_grad():
        for name in layers:
            w = space.model.get_submodule(name).weight
            assert isinstance(w, torch.Tensor)
            norm = float(w.pow(2).sum()) or 1.0
            err = {b: float((w - fake_quant_weight(w, b)).pow(2).sum()) / norm for b in WEIGHT_BITS}
            gain[name] = max(err[4] - err[8], 0.0)
    return gain


def _not_quantizable(costs: CostModel, name: str, layers: Mapping[str, int]) -> str:
    """Why ``name`` cannot be quantized, in one line."""
    if name in costs.trace.functional_layers:
        return f"layer {name!r} cannot be quantized: its weight is applied outside its forward (F.linear)"
    if name in costs.trace.spatial:
        kind = type(costs.trace.model.get_submodule(name)).__name__
        return f"layer {name!r} cannot be quantized: {kind} is not a plain Conv2d or Linear"
    example = next(iter(layers), "")
    return f"unknown layer {name!r}; quantizable layers are Conv2d/Linear names like {example!r}"
