"""ONNX exports of an exported candidate: the model in float32, and a real int8 model.

``prunetune export --format onnx`` adds to an export directory
(:mod:`search.operations._export`):

* ``model.onnx``: the compressed model in float32, written by torch's exporter
  (``torch.onnx.export(dynamo=True)``, opset 21, a dynamic batch, BatchNorm
  folded into the convolutions by its optimizer). A quantized candidate's
  layers hold their quantized weights (dequantized: on their 8- or 4-bit grid)
  and compute in float; its simulated input quantization is left to the int8
  model, since two runtimes round a value on a bin's edge differently. Checked
  against torch running the same float model on validation images: the largest
  output difference must be at most 1e-4, else nothing is kept.
* with ``--int8``, ``model.int8.onnx``: a real int8 model, by ONNX Runtime's
  static quantization of ``model.onnx`` (QDQ format; weights symmetric per
  output channel; inputs of the quantized layers unsigned 8-bit per tensor,
  calibrated on training images). The plan's quantized layers get their bits
  (8, or 4 as ``Int4`` initializers: packed two to a byte, memory only — ONNX
  Runtime has no fast 4-bit convolution on this CPU); its float32 layers are
  excluded by name; a plan without bits has every layer at 8 bits
  (post-training quantization). The weights are already on their grid, so ONNX
  Runtime's per-channel quantization reproduces them exactly, BatchNorm folded
  in or not (a per-channel scale does not move a weight off its channel's
  grid); where the simulated model quantizes a layer's input, its observed
  range is given to ONNX Runtime as the tensor's scale and zero point.

The checks are stored beside the export in ``onnx.json`` (and under ``onnx``
in ``model.json``): the files' bytes and their tensors' bytes (the rest is the
graph) beside the analytic bytes, the int8
model's top-1 agreement with the simulated model (the candidate as the search
scored it) on the validation split (target 99 %), and batch-1 latency (median
and interquartile range over ``runs`` timed runs after 5 untimed ones) of
torch, ONNX Runtime float32 and ONNX Runtime int8.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spaces import summarize, time_calls

if TYPE_CHECKING:
    import torch
    from torch import nn

    from evaluators import DataBundle
    from spaces import Plan

__all__ = ["export_onnx"]

PARITY_ATOL = 1e-4
AGREEMENT_TARGET = 0.99


def _tensor_bytes(path: Path) -> int:
    """The bytes of a model file's initializers (weights, scales, zero points, biases), as stored."""
    import onnx

    return sum(len(i.raw_data) or i.ByteSize() for i in onnx.load(str(path)).graph.initializer)


def _reader(batches: list[Any]) -> Any:
    """ONNX Runtime's calibration reader over a few training batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {"x": x}

    return Batches()


def _weight_scales(weight: Any, bits: int) -> list[dict[str, Any]]:
    """Per-output-channel overrides that keep a weight on the grid the simulated model put it on.

    ONNX Runtime's symmetric ``Int4`` range is [-8, 7] (a scale of
    ``2 * max|w| / 15``), not the [-7, 7] of :func:`spaces._quant.fake_quant_weight`,
    so its own scales would move 4-bit weights; the scales are given instead:
    ``max|w_c| / (2**(bits-1) - 1)`` per channel (BatchNorm folding multiplies
    a channel and its largest weight alike).
    """
    import numpy as np
    from onnxruntime.quantization import QuantType

    qmax = 2 ** (bits - 1) - 1
    kind, dtype = (QuantType.QInt4, np.int8) if bits == 4 else (QuantType.QInt8, np.int8)
    amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    out: list[dict[str, Any]] = []
    for a in amax:
        scale = np.array(a / qmax if a > 0 else 1.0, dtype=np.float32)
        out.append({"scale": scale, "zero_point": np.array(0, dtype=dtype)})
    out[0].update(axis=0, quant_type=kind)
    return out


def _overrides(graph: Any, plan: Plan, layers: dict) -> tuple[list[str], dict[str, Any]]:
    """The nodes to leave in float32 and the tensor overrides (weights' grids, inputs' observed ranges)."""
    import numpy as np
    from onnx import numpy_helper

    weights = {i.name: i for i in graph.initializer}
    everything = not plan.entries("bits")
    exclude: list[str] = []
    overrides: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        layer = node.input[1].rpartition(".")[0]  # the exporter names a weight by its parameter
        if not everything and layer not in layers:
            exclude.append(node.name)
            continue
        if everything:
            continue  # post-training quantization: ONNX Runtime's own symmetric 8-bit grid
        bits, rng = layers[layer]
        overrides[node.input[1]] = _weight_scales(numpy_helper.to_array(weights[node.input[1]]), bits)
        if rng is not None and node.input[0] not in overrides:
            scale = max(rng[1] - rng[0], 1e-12) / 255
            zero = np.array(round(-rng[0] / scale), np.uint8)
            overrides[node.input[0]] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": zero}]
    return exclude, overrides


def _quantize(float_path: Path, out: Path, plan: Plan, layers: dict, data: DataBundle, batches: int) -> None:
    """ONNX Runtime static QDQ quantization of ``float_path`` (see the module docs)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    exclude, overrides = _overrides(onnx.load(str(float_path)).graph, plan, layers)
    loader = data.train_loader(64, seed=0, shuffle=False)
    calib = [x.numpy() for _, (x, _) in zip(range(batches), loader, strict=False)]
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:  # its advice to pre-process goes to the root logger
        warnings.simplefilter("ignore")
        quantize_static(
            str(float_path),
            str(out),
            _reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm"],
            nodes_to_exclude=exclude,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": overrides},
        )


def _latency(run: Any, example: Any, runs: int) -> dict[str, float]:
    """Batch-1 latency of ``run(example)`` in ms: median and interquartile range over ``runs`` timed runs."""
    return summarize(time_calls(lambda: run(example), runs=runs, warmup=5))


def _outputs(session: Any, x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def _agreement(model: nn.Module, session: Any, data: DataBundle, max_samples: int | None) -> tuple[float, int]:
    """Top-1 agreement of ``session`` with ``model`` on the validation split (and the images compared)."""
    import torch

    same = total = 0
    with torch.no_grad():
        for x, _ in data.val_loader(256, max_samples):
            same += int((_outputs(session, x).argmax(1) == model(x).argmax(1)).sum())
            total += len(x)
    return same / total, total


def export_onnx(
    d: Path,
    *,
    data: DataBundle,
    int8: bool = False,
    threads: int = 1,
    runs: int = 20,
    calibration_batches: int = 8,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``int8`` ``model.int8.onnx``) into export directory ``d``; the checks.

    The checks (see the module docs) are also written to ``d / "onnx.json"``
    and under ``"onnx"`` in ``d / "model.json"``. Raises ``ValueError`` when
    the ONNX model's outputs differ from torch's by more than 1e-4.
    """
    import torch

    from search.operations._export import load_exported
    from spaces import Plan, dequantized, ort_session, write_onnx

    torch.set_num_threads(threads)
    model = load_exported(d)
    plan = Plan.from_json((d / "plan.json").read_text())
    meta = json.loads((d / "model.json").read_text())
    x, _ = next(iter(data.val_loader(64)))
    path = d / "model.onnx"
    float_model, layers = dequantized(model)
    write_onnx(float_model, x[:1], path)
    with torch.no_grad():
        diff = float((_outputs(ort_session(path, threads), x) - float_model(x)).abs().max())
    if diff > PARITY_ATOL:
        path.unlink()
        raise ValueError(f"the ONNX model's outputs differ from torch's by {diff:.2e} (> {PARITY_ATOL}): not written")
    checks: dict[str, Any] = {
        "model.onnx": {"bytes": path.stat().st_size, "tensor_bytes": _tensor_bytes(path), "parity_max_abs": diff}
    }
    checks["analytic_bytes"] = meta.get("bytes")
    if int8:
        checks.update(_int8(d, model, plan, layers, data, threads, runs, calibration_batches, max_samples))
    (d / "onnx.json").write_text(json.dumps(checks, indent=2) + "\n")
    meta["onnx"] = checks
    (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return checks


def _int8(
    d: Path,
    model: nn.Module,
    plan: Plan,
    layers: dict,
    data: DataBundle,
    threads: int,
    runs: int,
    batches: int,
    max_samples: int | None,
) -> dict[str, Any]:
    """``model.int8.onnx`` and its checks: bytes, agreement with ``model`` on validation, latency against fp32."""
    import torch

    from spaces import ort_session

    example = torch.zeros(1, *data.input_shape)
    out = d / "model.int8.onnx"
    _quantize(d / "model.onnx", out, plan, layers, data, batches)
    fp32, int8 = ort_session(d / "model.onnx", threads), ort_session(out, threads)
    agree, n = _agreement(model, int8, data, max_samples)
    latency = {
        "torch": _latency(torch.no_grad()(model), example, runs),
        "onnxruntime fp32": _latency(lambda x: _outputs(fp32, x), example, runs),
        "onnxruntime int8": _latency(lambda x: _outputs(int8, x), example, runs),
    }
    return {
        "model.int8.onnx": {"bytes": out.stat().st_size, "tensor_bytes": _tensor_bytes(out)},
        "top1_agreement": agree,
        "agreement_images": n,
        "agreement_target_met": agree >= AGREEMENT_TARGET,
        "latency_batch1": latency,
        "threads": threads,
    }
