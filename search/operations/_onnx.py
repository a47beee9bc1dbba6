"""ONNX exports of an exported candidate: the model in float32, and a real int8 model; both are the scored model.

``prunetune export --format onnx`` adds to an export directory
(:mod:`search.operations._export`):

* ``model.onnx``: the compressed model in float32, written by torch's exporter
  (``torch.onnx.export(dynamo=True)``, opset 21, a dynamic batch, BatchNorm
  folded into the convolutions by its optimizer). A quantized candidate's
  layers hold their quantized weights (dequantized: on their 8- or 4-bit grid)
  and compute in float; its simulated input quantization is left to the int8
  model. Checked against torch running the same float model on validation
  images: the largest output difference must be at most 1e-4, else nothing is
  kept.
* with ``--int8``, ``model.int8.onnx``, built from ``model.onnx`` layer by
  layer as the plan says (:func:`quantize_onnx`). Every layer of the plan's
  ``bits`` is found in the graph by its weight's name (torch's exporter names
  an initializer by its state-dict key, ``layer1.0.conv1.weight``, BatchNorm
  folded in or not); a layer that cannot be found fails the export with one
  line naming it, never staying float unseen.

  - **weights only** (a layer with ``bits`` and no ``act_bits``): its weight
    becomes integer codes (``int8``, or ``int4`` packed two to a byte) and a
    ``DequantizeLinear`` per output channel; inputs, outputs and biases stay
    float. The codes are the fake quantizer's own
    (:func:`spaces._quant.fake_quant_weight`: ``round(W / scale)`` with
    ``scale = max|W_c| / (2^(bits-1) - 1)``; a folded BatchNorm multiplies a
    channel's weights and its scale alike), so the int8 model computes what
    the scored candidate computes, up to float rounding. A weight that is not
    on its grid is an error (it would not be the scored layer). 4-bit convs
    have no fast kernel here (``MatMulNBits`` is MatMul only, blockwise): they
    are ``int4`` ``DequantizeLinear`` initializers, memory only.
  - **weights and inputs** (``act_bits``): ONNX Runtime's static quantization
    (QDQ format) of these nodes, for its integer kernels: weights on the same
    per-channel grid (the scales are given, so ONNX Runtime keeps the codes),
    each input's scale and zero point from the range the candidate observed.
    ONNX Runtime also rounds each such layer's output to 8 bits (ranges
    calibrated on training images), stores the bias as int32 and feeds every
    reader of a quantized tensor its quantized copy: what its integer kernels
    need, and what the simulated model does not do; the agreement below
    measures what it costs.
  - a plan without ``bits`` is quantized after training (every conv and linear
    layer, weights and inputs, ONNX Runtime's own grid).

Each ONNX Runtime model is then run beside the scored candidate (the
exported model in torch: base + plan + the candidate's weights, its fake
quantizers included) on the validation split, the split the candidate was
scored on: the top-1 agreement, both accuracies and their difference go to
``model.json`` (``agreement``: the int8 model's with ``--int8``, else the
float model's) and per file to ``onnx.json``. Below the tolerance (top-1
agreement 0.99 by default) the export refuses and removes the ONNX files,
unless told to keep a gap (``allow_gap``). The other checks, in ``onnx.json``
(and under ``onnx`` in ``model.json``): the files' bytes and their tensors'
bytes beside the analytic bytes, and batch-1 latency (median and
interquartile range over ``runs`` timed runs after 5 untimed ones) of torch,
ONNX Runtime float32 and ONNX Runtime int8.
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
    import numpy as np
    import torch
    from onnx import GraphProto, NodeProto
    from torch import nn

    from evaluators import DataBundle

__all__ = ["AGREEMENT_TOLERANCE", "agreement", "export_onnx", "quantize_onnx"]

PARITY_ATOL = 1e-4
AGREEMENT_TOLERANCE = 0.99  # the top-1 agreement below which the export refuses (unless allow_gap)
GRID_RTOL = 1e-5  # how far (relative to a channel's largest weight) a weight may sit from its grid
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")

Layers = dict[str, tuple[int, tuple[float, float] | None]]  # spaces.dequantized's: weight bits, input range


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


def _match(graph: GraphProto, layers: Layers) -> dict[str, list[NodeProto]]:
    """The nodes that compute each quantized layer: the Conv, Gemm or MatMul nodes reading ``<layer>.weight``.

    A layer with no such node is a one-line ``ValueError`` naming it: it
    cannot be quantized, and leaving it float would export another model than
    the one scored.
    """
    weights = {i.name for i in graph.initializer}
    found: dict[str, list[NodeProto]] = {name: [] for name in layers}
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weights:
            layer, dot, leaf = node.input[1].rpartition(".")
            if dot and leaf == "weight" and layer in found:
                found[layer].append(node)
    for name, nodes in found.items():
        if not nodes:
            raise ValueError(
                f"layer {name!r} ({layers[name][0]}-bit weights in the plan) has no Conv, Gemm or MatMul node "
                f"reading {name}.weight in the ONNX graph: the int8 export cannot quantize it and does not leave "
                "it float"
            )
    return found


def _axis(node: NodeProto) -> int:
    """The output-channel axis of ``node``'s weight: 0 for Conv and a transposed Gemm, 1 for MatMul and Gemm."""
    if node.op_type == "Conv":
        return 0
    trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans else 1


def _codes(w: np.ndarray, axis: int, bits: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The integer codes and per-channel scales of weight ``w``, which must be on its ``bits`` grid.

    The fake quantizer's arithmetic (:func:`spaces._quant.fake_quant_weight`)
    on the exported weight: a folded BatchNorm scales a channel's weights and
    its largest weight alike, so the codes are the scored layer's.
    """
    import numpy as np

    qmax = 2 ** (bits - 1) - 1
    channels = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(channels).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.rint(w / scale.reshape(shape))
    off = float((np.abs(q * scale.reshape(shape) - w).max(axis=tuple(i for i in range(w.ndim) if i != axis))).max())
    if off > GRID_RTOL * max(float(amax.max()), 1e-12):
        raise ValueError(
            f"layer {layer!r}: its weight in the ONNX graph is not on its {bits}-bit grid (off by {off:.1e}): it "
            "is not the weight the candidate was scored with"
        )
    return q.astype(np.int8), scale


def _dequantize_weights(graph: GraphProto, nodes: list[NodeProto], bits: int, layer: str) -> None:
    """Replace the float weight of ``nodes`` by its integer codes and a ``DequantizeLinear`` per output channel."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    name = nodes[0].input[1]
    init = next(i for i in graph.initializer if i.name == name)
    axis = _axis(nodes[0])
    q, scale = _codes(numpy_helper.to_array(init), axis, bits, layer)
    codes = q.astype(ml_dtypes.int4) if bits == 4 else q
    graph.initializer.remove(init)
    graph.initializer.extend(
        [numpy_helper.from_array(codes, f"{name}_quantized"), numpy_helper.from_array(scale, f"{name}_scale")]
    )
    dq = helper.make_node(
        "DequantizeLinear", [f"{name}_quantized", f"{name}_scale"], [f"{name}_dequantized"], f"{name}_dq", axis=axis
    )
    graph.node.insert(0, dq)  # it reads initializers only: first is a topological place
    for node in nodes:
        node.input[1] = f"{name}_dequantized"


def _float_inputs(graph: GraphProto, nodes: list[NodeProto]) -> None:
    """Point weights-only ``nodes`` back at float inputs where ONNX Runtime's quantizer quantized their input
    tensor for a neighbour (it rewires every reader of a tensor it quantizes)."""
    produced = {out: n for n in graph.node for out in n.output}
    for node in nodes:
        dq = produced.get(node.input[0])
        q = produced.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]


def _weight_scales(weight: np.ndarray, axis: int, bits: int, layer: str) -> list[dict[str, Any]]:
    """Per-output-channel overrides that keep a weight on the grid the simulated model put it on.

    ONNX Runtime's symmetric ``Int4`` range is [-8, 7] (a scale of
    ``2 * max|w| / 15``), not the [-7, 7] of :func:`spaces._quant.fake_quant_weight`,
    so its own scales would move 4-bit weights; the scales are given instead.
    """
    import numpy as np
    from onnxruntime.quantization import QuantType

    _, scales = _codes(weight, axis, bits, layer)
    kind = QuantType.QInt4 if bits == 4 else QuantType.QInt8
    out = [{"scale": np.array(s, dtype=np.float32), "zero_point": np.array(0, dtype=np.int8)} for s in scales]
    out[0].update(axis=axis, quant_type=kind)
    return out


def _overrides(graph: GraphProto, found: dict[str, list[NodeProto]], layers: Layers) -> dict[str, Any]:
    """ONNX Runtime's tensor overrides for the layers with quantized inputs: their weights' grids, their inputs'
    observed ranges (the scale and zero point of :class:`spaces._quant.ActQuant`)."""
    import numpy as np
    from onnx import numpy_helper

    weights = {i.name: i for i in graph.initializer}
    overrides: dict[str, Any] = {}
    for layer, nodes in found.items():
        bits, rng = layers[layer]
        if rng is None:
            continue
        for node in nodes:
            w = numpy_helper.to_array(weights[node.input[1]])
            overrides[node.input[1]] = _weight_scales(w, _axis(node), bits, layer)
            if node.input[0] not in overrides:  # float32 arithmetic, as ActQuant's
                lo, hi = np.float32(rng[0]), np.float32(rng[1])
                scale = np.maximum((hi - lo) / np.float32(255), np.float32(1e-12))
                zero = np.array(np.rint(-lo / scale), np.uint8)
                overrides[node.input[0]] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": zero}]
    return overrides


def _static(src: Path, out: Path, data: DataBundle, batches: int, nodes: list[str] | None, overrides: dict) -> None:
    """ONNX Runtime's static QDQ quantization of ``nodes`` of ``src`` (``None``: every Conv and Gemm)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    loader = data.train_loader(64, seed=0, shuffle=False)
    calib = [x.numpy() for _, (x, _) in zip(range(batches), loader, strict=False)]
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:  # its advice to pre-process goes to the root logger
        warnings.simplefilter("ignore")
        quantize_static(
            str(src),
            str(out),
            _reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm"] if nodes is None else list(_WEIGHT_OPS),
            nodes_to_quantize=nodes,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": overrides},
        )


def _check_static(graph: GraphProto, nodes: list[str], found: dict[str, list[NodeProto]]) -> None:
    """A one-line error for a layer ONNX Runtime left unquantized (its weight or input not dequantized)."""
    produced = {out: n.op_type for n in graph.node for out in n.output}
    by_name = {n.name: n for n in graph.node}
    for layer, layer_nodes in found.items():
        for node in (by_name.get(n.name) for n in layer_nodes if n.name in nodes):
            if node is None or any(produced.get(t) != "DequantizeLinear" for t in node.input[:2]):
                raise ValueError(
                    f"layer {layer!r}: ONNX Runtime's quantizer left it float (weight or input not quantized)"
                )


def quantize_onnx(src: Path, out: Path, layers: Layers, data: DataBundle, batches: int = 8) -> str:
    """Write the int8 model of float model ``src`` to ``out`` as the plan's ``layers`` say (see the module docs).

    ``layers`` is :func:`spaces.dequantized`'s: per quantized layer its weight
    bits and its observed input range (``None``: weights only); empty, every
    conv and linear layer is quantized after training. Returns the scheme, in
    words.
    """
    import onnx

    if not layers:
        _static(src, out, data, batches, None, {})
        return "post-training static QDQ (ONNX Runtime): every Conv/Gemm, weights and inputs at 8 bits"
    model = onnx.load(str(src))
    found = _match(model.graph, layers)
    act = [n.name for layer, nodes in found.items() if layers[layer][1] is not None for n in nodes]
    if act:
        _static(src, out, data, batches, act, _overrides(model.graph, found, layers))
        model = onnx.load(str(out))
        _check_static(model.graph, act, found)
    by_name = {n.name: n for n in model.graph.node}
    weights_only = {layer: [by_name[n.name] for n in nodes] for layer, nodes in found.items() if not layers[layer][1]}
    for layer, nodes in weights_only.items():
        _float_inputs(model.graph, nodes)
        _dequantize_weights(model.graph, nodes, layers[layer][0], layer)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    parts = [f"{len(weights_only)} layers weights only (DequantizeLinear)"] if weights_only else []
    parts += [f"{len(found) - len(weights_only)} layers weights and inputs (static QDQ)"] if act else []
    return ", ".join(parts)


def _latency(run: Any, example: Any, runs: int) -> dict[str, float]:
    """Batch-1 latency of ``run(example)`` in ms: median and interquartile range over ``runs`` timed runs."""
    return summarize(time_calls(lambda: run(example), runs=runs, warmup=5))


def _outputs(session: Any, x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def agreement(
    model: nn.Module, sessions: dict[str, Any], data: DataBundle, *, tolerance: float, max_samples: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per ONNX Runtime session, its agreement with ``model`` (the scored candidate) on the validation split.

    Each entry: ``top1`` (the share of images where both predict the same
    class), ``accuracy_torch``, ``accuracy_onnx``, ``accuracy_diff`` (ONNX
    minus torch), ``images`` and ``tolerance``.
    """
    import torch

    same, right = dict.fromkeys(sessions, 0), dict.fromkeys(sessions, 0)
    right_torch = total = 0
    with torch.no_grad():
        for x, y in data.val_loader(256, max_samples):
            ref = model(x).argmax(1)
            right_torch += int((ref == y).sum())
            for key, session in sessions.items():
                pred = _outputs(session, x).argmax(1)
                same[key] += int((pred == ref).sum())
                right[key] += int((pred == y).sum())
            total += len(x)
    if total == 0:
        raise ValueError("the validation split is empty: the ONNX model's agreement cannot be measured")
    return {
        key: {
            "top1": same[key] / total,
            "accuracy_torch": right_torch / total,
            "accuracy_onnx": right[key] / total,
            "accuracy_diff": (right[key] - right_torch) / total,
            "images": total,
            "tolerance": tolerance,
        }
        for key in sessions
    }


def agreement_line(name: str, a: dict[str, Any]) -> str:
    """One line saying how ``name`` agrees with the scored candidate."""
    return (
        f"{name}: top-1 agreement with the scored candidate {100 * a['top1']:.2f}% on {a['images']} validation "
        f"images (tolerance {100 * a['tolerance']:.2f}%); accuracy {100 * a['accuracy_onnx']:.2f}% against "
        f"{100 * a['accuracy_torch']:.2f}% in torch ({100 * a['accuracy_diff']:+.2f} points)"
    )


def export_onnx(
    d: Path,
    *,
    data: DataBundle,
    int8: bool = False,
    threads: int = 1,
    runs: int = 20,
    calibration_batches: int = 8,
    max_samples: int | None = None,
    tolerance: float = AGREEMENT_TOLERANCE,
    allow_gap: bool = False,
) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``int8`` ``model.int8.onnx``) into export directory ``d``; the checks.

    The checks (see the module docs) are written to ``d / "onnx.json"`` and
    under ``"onnx"`` in ``d / "model.json"``, the agreement of the model
    written last under ``"agreement"``. Raises ``ValueError``, the ONNX files
    removed, when the float model's outputs differ from torch's by more than
    1e-4, when a quantized layer cannot be found in the graph, or when a
    model's top-1 agreement with the scored candidate is below ``tolerance``
    (unless ``allow_gap``).
    """
    import torch

    from search.operations._export import load_exported
    from spaces import dequantized, ort_session

    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"the agreement tolerance must be a fraction in [0, 1], got {tolerance}")
    torch.set_num_threads(threads)
    model = load_exported(d)
    meta = json.loads((d / "model.json").read_text())
    float_model, layers = dequantized(model)
    written = [d / "model.onnx", d / "model.int8.onnx"]
    try:
        checks: dict[str, Any] = {"model.onnx": _float_onnx(d / "model.onnx", float_model, data, threads)}
        if int8:
            scheme = quantize_onnx(d / "model.onnx", d / "model.int8.onnx", layers, data, calibration_batches)
            checks["model.int8.onnx"] = {"scheme": scheme, **_file_bytes(d / "model.int8.onnx")}
        sessions = {name: ort_session(d / name, threads) for name in checks}
        agreed = agreement(model, sessions, data, tolerance=tolerance, max_samples=max_samples)
        _check_agreement(agreed, tolerance, allow_gap)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for name, a in agreed.items():
        checks[name]["agreement"] = a
    checks["analytic_bytes"] = meta.get("bytes")
    if int8:
        checks["latency_batch1"] = _latencies(model, sessions, data, runs)
        checks["threads"] = threads
    (d / "onnx.json").write_text(json.dumps(checks, indent=2) + "\n")
    meta["onnx"] = checks
    meta["agreement"] = {"model": list(agreed)[-1], "split": "validation", **agreed[list(agreed)[-1]]}
    (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return checks


def _file_bytes(path: Path) -> dict[str, int]:
    return {"bytes": path.stat().st_size, "tensor_bytes": _tensor_bytes(path)}


def _float_onnx(path: Path, float_model: nn.Module, data: DataBundle, threads: int) -> dict[str, Any]:
    """Write the float ``model.onnx`` and check it against torch on validation images (within 1e-4)."""
    import torch

    from spaces import ort_session, write_onnx

    x, _ = next(iter(data.val_loader(64)))
    write_onnx(float_model, x[:1], path)
    with torch.no_grad():
        diff = float((_outputs(ort_session(path, threads), x) - float_model(x)).abs().max())
    if diff > PARITY_ATOL:
        raise ValueError(f"the ONNX model's outputs differ from torch's by {diff:.2e} (> {PARITY_ATOL}): not written")
    return {**_file_bytes(path), "parity_max_abs": diff}


def _check_agreement(agreed: dict[str, dict[str, Any]], tolerance: float, allow_gap: bool) -> None:
    """A one-line ``ValueError`` for the first model whose top-1 agreement is below ``tolerance``."""
    for name, a in agreed.items():
        if a["top1"] < tolerance and not allow_gap:
            raise ValueError(
                f"{name} agrees with the scored candidate on {100 * a['top1']:.2f}% of {a['images']} validation "
                f"images (top-1), below the tolerance {100 * tolerance:.2f}%: not written (--min-agreement sets "
                "the tolerance, --allow-gap writes it anyway)"
            )


def _latencies(model: nn.Module, sessions: dict[str, Any], data: DataBundle, runs: int) -> dict[str, Any]:
    """Batch-1 latency of torch, ONNX Runtime float32 and ONNX Runtime int8 (median, IQR, p90 in ms)."""
    import torch

    example = torch.zeros(1, *data.input_shape)
    fp32, int8 = sessions["model.onnx"], sessions["model.int8.onnx"]
    return {
        "torch": _latency(torch.no_grad()(model), example, runs),
        "onnxruntime fp32": _latency(lambda x: _outputs(fp32, x), example, runs),
        "onnxruntime int8": _latency(lambda x: _outputs(int8, x), example, runs),
    }
