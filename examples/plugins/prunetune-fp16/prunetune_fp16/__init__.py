"""``fp16 = {layer: 16}``: a conv / linear layer whose weight is stored in float16 (a PruneTune plug-in).

The weight is kept as a float16 parameter behind a parametrization that
casts it to float32 in the forward pass (``torch.nn.utils.parametrize``), so
the layer computes as before from a rounded weight, the state dict and the
safetensors export hold two bytes per element, and the exact cost is the
float32 model's bytes less two per weight element. MACs and the parameter
count do not change. A layer with a rank or with bits is a one-line error
(the factors or the integer codes are what is stored there).

The sampler gets one parameter, ``fp16:share``: the share of the eligible
layers' weights (every conv / linear layer but the first and the last, with
``keep_first_last``) stored in float16, largest layers first, on a grid of
quarters up to ``max_share``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from spaces import InputTypeError, PlanError
from spaces.dimensions import CostState, Dimension, Entries, ParamSpec, Reported, Sampled, StructureRow

if TYPE_CHECKING:  # the registry loads this module to read a config: it stays torch-free
    from spaces import ModelSpace, Plan

__all__ = ["Fp16Dimension", "Fp16Options"]

_STEP = 0.25


class Fp16Options(BaseModel):
    """``[space.fp16]``: the table present turns the dimension on."""

    model_config = ConfigDict(extra="forbid")
    max_share: float = Field(1.0, gt=0, le=1, description="the largest share of the eligible weights in float16")
    keep_first_last: bool = Field(True, description="never store the first and the last layer in float16")


class Fp16Dimension(Dimension, Sampled, Reported):
    key = "fp16"
    describe: ClassVar[dict[str, str]] = {"fp16": "layer to 16 (its weight stored in float16)"}
    order = 30  # after pruning, ranks and bits: it stores what they leave
    options = Fp16Options

    def normalize(self, values: Entries) -> Entries:
        for layer, bits in values["fp16"].items():
            if isinstance(bits, bool) or bits != 16:
                raise PlanError(f"fp16 of layer {layer!r} must be 16 (absent: float32), got {bits!r}")
            if not isinstance(layer, str):
                raise InputTypeError(f"fp16 keys must be layer names (str), got {layer!r}")
        return {"fp16": {layer: 16 for layer in values["fp16"]}}

    def resolve(self, costs: Any, plan: Plan, keep: Any) -> Any | None:
        """The layers, in plan order, after checking each is a conv / linear layer with neither rank nor bits."""
        layers = list(plan.entries("fp16"))
        for name in layers:
            if name not in costs.trace.geoms:
                raise PlanError(f"fp16: unknown layer {name!r} (a conv or linear layer of the model)")
            if name in plan.entries("rank") or name in plan.entries("bits"):
                raise PlanError(f"fp16: layer {name!r} also has a rank or bits; store it one way")
        return layers or None

    def add_cost(self, costs: Any, resolved: Any, keep: Any, state: CostState) -> None:
        for name in resolved:
            numel = 1
            for n in costs.weight_shape(name, keep):
                numel *= n
            state.bytes -= numel * (costs.element_size(name) - 2)

    def apply(self, surgery: Any, model: Any, resolved: Any, keep: Any) -> None:
        from prunetune_fp16._torch import store_half  # torch, imported when a plan is built

        for name in resolved:
            store_half(model.get_submodule(name))

    # ------------------------------------------------------------ the sampler
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        opts = options.get(self.key)
        if not isinstance(opts, Fp16Options) or not _eligible(space, opts):
            return {}
        return {"share": ParamSpec(0.0, opts.max_share, step=_STEP)}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        opts = options[self.key]
        sizes = _eligible(space, opts)
        target, done, out = float(values["share"]) * sum(sizes.values()), 0, {}
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
            if done >= target - 0.5:
                break
            out[name], done = 16, done + size
        return {"fp16": out}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        sizes = _eligible(space, options[self.key])
        half = sum(size for name, size in sizes.items() if name in plan.entries("fp16"))
        share = round(half / sum(sizes.values()) / _STEP) * _STEP if sizes else 0.0
        return {"share": min(share, specs["share"].high)}

    # ------------------------------------------------------------ the report
    def summary(self, plan: Plan, limit: int) -> str | None:
        n = len(plan.entries("fp16"))
        return f"{n} layer{'s' if n != 1 else ''} in float16" if n else None

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        half = plan.entries("fp16")
        return [StructureRow("weight bits", g.name, 16 if g.name in half else 32, 32) for g in space.layers]

    def export_notes(self, plan: Plan) -> dict[str, Any] | None:
        layers = plan.entries("fp16")
        if not layers:
            return None
        return {"float16_layers": sorted(layers), "compute": "float32 (the weight is cast in the forward pass)"}


def _eligible(space: ModelSpace, opts: Fp16Options) -> dict[str, int]:
    """The layers the sampler may store in float16, with their weight's size."""
    names = [g.name for g in space.layers]
    if opts.keep_first_last:
        names = names[1:-1]
    return {n: int(space.model.get_submodule(n).weight.numel()) for n in names}
