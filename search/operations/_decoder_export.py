"""Exports of a compressed language model: weights + plan, a plain ``transformers`` directory, ONNX in 32, 8 and 4 bits.

:func:`export_decoder` writes, into ``out``:

* ``model.safetensors`` and ``plan.json``: the compressed model's weights and its
  plan. :func:`load_decoder` rebuilds it from the base model, the plan and the
  weights (the house rule: never a pickle, never a model object on disk);
* ``hf/`` where the family's config can say what the plan made (every layer with
  the same widths and head counts, e.g. a uniform plan): ``save_pretrained`` with
  the config's fields set, which ``transformers`` alone loads; otherwise no
  ``hf/`` and ``export.json`` says why;
* ``model.onnx``: float32, torch's exporter, a dynamic batch and sequence,
  checked against torch on the given tokens (largest logit difference at most
  1e-4, else nothing is kept);
* ``model.int8.onnx`` and ``model.int4.onnx``: ONNX Runtime's weight-only
  ``MatMulNBits`` quantizer (symmetric, blocks of 32 along the input) applied to
  every MatMul of ``model.onnx``: each projection, the MLPs and the output head
  hold 8- or 4-bit codes and compute with ONNX Runtime's blockwise kernels;
* ``model.plan.onnx``, for a plan with per-layer ``bits``: the same quantizer,
  but each layer's projections and MLP at the bits its plan entry says (4 or 8),
  the other layers and the output head in float32. A MatMul is matched to its
  ``nn.Linear`` by its weights (the exporter keeps no module names): the
  initializer equal to the layer's transposed weight.

The files are written in a staging folder and moved into ``out`` at the end
(:mod:`search.operations._staged`): an export that fails, or is interrupted,
leaves ``out`` as it was, and a new export replaces every file of an old one
(an old ``hf/`` the new plan cannot express goes too).

A plan with per-layer ``bits`` keeps its float master weights in
``model.safetensors`` (the loader quantizes them again, as the plan says);
``hf/`` and ``model.onnx`` hold the quantized layers' weights on their grid
(:func:`spaces.dequantized`), so both compute what the compressed model
computes. The 8- and 4-bit ONNX files quantize every MatMul at one width; ``model.plan.onnx`` holds the
plan's widths. Its codes re-quantize the weights on the plan's grid (symmetric per output channel) with
``MatMulNBits``' blocks of 32, so it agrees with the compressed model closely, not bit for bit.

``export.json`` records, per ONNX file, its bytes, the largest logit difference
from the torch model and the top-1 next-token agreement with it on ``tokens``
(held-out text), and the analytic cost beside the weights' bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search.operations._staged import staged
from spaces import Plan

if TYPE_CHECKING:
    from spaces.decoder import DecoderChoice

__all__ = ["export_decoder", "load_decoder"]

PARITY_ATOL = 1e-4
BITS = (8, 4)
FILES = (
    "model.safetensors",
    "plan.json",
    "hf",
    "model.onnx",
    *(f"model.int{b}.onnx" for b in BITS),
    "model.plan.onnx",
    "export.json",
)


class _Logits(nn.Module):
    """``input_ids -> logits`` without a cache: the graph ONNX holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x, use_cache=False).logits


def export_decoder(
    model: nn.Module,
    plan: Plan,
    out: str | Path,
    *,
    tokens: torch.Tensor,
    compressed: nn.Module | None = None,
    context: int = 64,
) -> dict:
    """Write the exports of ``plan`` on the base ``model`` into ``out`` (see the module docs); returns ``export.json``.

    ``compressed`` is the model to export, the plan applied to ``model`` and then
    trained (a recovered student); by default the plan applied to ``model`` as it is.
    """
    from spaces.decoder import apply_decoder_plan

    dest = Path(out)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    compressed = (compressed if compressed is not None else apply_decoder_plan(model, plan)).eval()
    try:
        report = _write(model, compressed, plan, dest, tokens, context)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)  # a folder made for this export goes with it
        raise
    return report


def _write(model: nn.Module, compressed: nn.Module, plan: Plan, dest: Path, tokens: torch.Tensor, context: int) -> dict:
    """The files of :func:`export_decoder`, staged in ``dest``: a failure leaves ``dest`` as it was."""
    from safetensors.torch import save_model

    from spaces import dequantized
    from spaces.decoder import decoder_cost, layout_of, resolve

    with staged(dest, stale=FILES, last="export.json") as out:
        save_model(compressed, str(out / "model.safetensors"))
        (out / "plan.json").write_text(plan.to_json(indent=2))
        choice = resolve(model, plan, counts_only=True)  # the counts: costs, factor chains, renumbered bits
        cost = decoder_cost(model, choice, context=context)
        report: dict[str, Any] = {"plan": plan.hash, "params": cost.params, "weight_bytes": cost.weight_bytes}
        plain = dequantized(compressed)[0] if plan.entries("bits") else compressed  # bits: the weights on their grid
        factored = any(choice.ranks.values())
        fields = None if factored else layout_of(plain).config_fields(plain)
        if fields is None:
            why = "factor chains" if factored else "these widths and heads (per layer or width)"
            report["hf"] = f"not written: the family's config cannot say {why}"
        else:
            _save_pretrained(plain, fields, out / "hf")
            report["hf"] = "hf/"
        batch = torch.stack([tokens[i * context : (i + 1) * context] for i in range(4)])
        report["onnx"] = _onnx_files(plain, batch, out, _renumbered_bits(model, choice))
        (out / "export.json").write_text(json.dumps(report, indent=2))
    return report


def _renumbered_bits(model: nn.Module, choice: DecoderChoice) -> dict[str, int]:
    """The plan's per-layer bits keyed by the compressed model's layer names: a plan that drops layers renumbers
    those after them (``model.layers.3`` is ``model.layers.2`` once layer 1 is gone)."""
    from spaces.decoder import layout_of

    path = layout_of(model).layers_path(model)
    return {f"{path}.{choice.layers.index(i)}": int(b) for i, b in choice.bits.items()}


def _save_pretrained(model: nn.Module, fields: dict[str, Any], path: Path) -> None:
    """``save_pretrained`` of ``model``, whose config already says what the plan made (``apply_decoder_plan``)."""
    config: Any = model.config
    for key, value in fields.items():
        setattr(config, key, value)
    model.save_pretrained(path, safe_serialization=True)  # type: ignore[operator]


def _onnx_files(model: nn.Module, batch: torch.Tensor, out: Path, bits: Mapping[str, int]) -> dict[str, Any]:
    """``model.onnx`` (checked against torch), its 8- and 4-bit weight-only versions and, for per-layer ``bits``,
    ``model.plan.onnx``, with their agreement."""
    import onnx

    from search.operations._nbits import matmul_nbits_quantizer
    from spaces import ort_session, write_onnx

    quantizer = matmul_nbits_quantizer()  # before the export: its import used to turn on every library's INFO

    wrapped = _Logits(model).eval()
    path = out / "model.onnx"
    write_onnx(wrapped, batch[:2], path, axes=("batch", "sequence"))  # size 1 would be specialized
    with torch.no_grad():
        reference = wrapped(batch)
    found: dict[str, Any] = {"model.onnx": _agreement(ort_session(path, 2), batch, reference)}
    if found["model.onnx"]["max_abs"] > PARITY_ATOL:  # the staging folder goes, and with it the whole export
        raise ValueError(f"the ONNX model's logits differ from torch's by {found['model.onnx']['max_abs']:.2e}")
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        for width in BITS:
            q = quantizer(onnx.load(str(path)), bits=width, block_size=32, is_symmetric=True)
            q.process()
            q.model.save_model_to_file(str(out / f"model.int{width}.onnx"))
        if bits:
            _plan_file(quantizer, model, path, bits, out / "model.plan.onnx")
    finally:
        quiet.level = level
    for name in [f"model.int{width}.onnx" for width in BITS] + (["model.plan.onnx"] if bits else []):
        found[name] = _agreement(ort_session(out / name, 2), batch, reference)
    for name in found:
        found[name]["bytes"] = (out / name).stat().st_size
    return found


def _plan_file(quantizer: Any, model: nn.Module, source: Path, bits: Mapping[str, int], dest: Path) -> None:
    """``source`` with each weight MatMul of a layer in ``bits`` quantized at that layer's width (one quantizer
    pass per width, every other MatMul excluded from it); the rest stays float32."""
    import onnx

    nodes = matmul_modules(onnx.load(str(source)), model)
    width_of = {node: next((b for layer, b in bits.items() if name.startswith(layer + ".")), None)
                for node, name in nodes.items()}  # fmt: skip
    graph: Any = onnx.load(str(source))
    matmuls = [n.name for n in graph.graph.node if n.op_type == "MatMul"]
    for width in sorted(set(bits.values())):
        others = [node for node in matmuls if width_of.get(node) != width]  # unmatched ones too: they stay float
        q = quantizer(graph, bits=width, block_size=32, is_symmetric=True, nodes_to_exclude=others)
        q.process()
        graph = q.model.model
    onnx.save(graph, str(dest))


def matmul_modules(graph: Any, model: nn.Module) -> dict[str, str]:
    """Each MatMul node of ``graph`` whose second input is a weight, mapped to the name of the ``nn.Linear`` of
    ``model`` whose transposed weight it holds (torch's exporter keeps no module names on these nodes)."""
    import hashlib

    import numpy as np
    from onnx import numpy_helper

    def key(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes() + str(a.shape).encode()).hexdigest()

    linears = {key(m.weight.detach().cpu().numpy().T): n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    weights = {i.name: i for i in graph.graph.initializer}
    out: dict[str, str] = {}
    for node in graph.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights:
            name = linears.get(key(numpy_helper.to_array(weights[node.input[1]])))
            if name is not None:
                out[node.name] = name
    return out


def _agreement(session: Any, batch: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The largest logit difference from ``reference`` and the share of equal next-token choices."""
    logits = torch.from_numpy(session.run(None, {"x": batch.numpy()})[0])
    return {
        "max_abs": float((logits - reference).abs().max()),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def load_decoder(base: nn.Module, path: str | Path) -> nn.Module:
    """The exported model rebuilt from ``base``, the export's ``plan.json`` and its ``model.safetensors``."""
    from safetensors.torch import load_model

    from spaces.decoder import apply_decoder_plan, resolve

    path = Path(path)
    plan = Plan.from_json((path / "plan.json").read_text())
    model = apply_decoder_plan(base, resolve(base, plan, counts_only=True), shapes_only=True)  # the weights follow
    load_model(model, str(path / "model.safetensors"), strict=True)
    return model.eval()
