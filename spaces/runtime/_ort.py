"""ONNX Runtime as a latency runtime: a model or one layer, exported and run on the CPU.

A device profile (:mod:`spaces.cost._latency`) can be measured in the runtime that
will serve the model. With ``runtime = "onnxruntime"``:

* **a whole model** (the profile's calibration, a front member's end-to-end
  measurement, the latency evaluator) is exported by torch's exporter
  (:func:`write_onnx`: ``torch.onnx.export(dynamo=True)``, opset 21, a dynamic
  batch; the exporter's optimizer folds BatchNorm into the convolutions, as a
  deployed model has it) and timed in an ONNX Runtime session on the CPU;
* **one conv or linear layer** of a profile's table is written directly as a
  one-node ONNX graph (:func:`layer_runner`: ``Conv`` with the layer's kernel,
  stride, padding, dilation and groups, or ``MatMul`` + ``Add`` for a linear
  layer on inputs of any rank) holding the layer's own weights: exporting each
  of a table's sixty-four grid points through torch's exporter would take
  seconds apiece. A test checks that the graph computes what the layer does.

Sessions run with ``threads`` intra-op threads and one inter-op thread, at
ONNX Runtime's default (full) graph optimization. ``onnx`` and
``onnxruntime`` are the ``[onnx]`` extra; without them a one-line error says
so. Written here rather than taken from a library: onnx's ``helper`` builds
the nodes; nothing builds single-layer benchmark graphs from torch modules.
"""

from __future__ import annotations

import contextlib
import io
import platform
import tempfile
import warnings
from collections.abc import Callable, Collection, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces._errors import PlanError
from spaces.runtime._base import Runtime, Timing

__all__ = [
    "OPSET",
    "OnnxRuntime",
    "layer_runner",
    "model_runner",
    "node_owners",
    "node_times",
    "onnx_bytes",
    "ort_session",
    "write_onnx",
]

OPSET = 21
IR_VERSION = 10


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU: a whole model exported by torch's exporter, one layer as a one-node graph, each
    layer's time in context from ONNX Runtime's per-node profiler on the same export."""

    name = "onnxruntime"

    def check(self, device: torch.device, inputs: tuple[Any, ...] = ()) -> None:
        if inputs:
            _one_input(inputs)
        if device.type != "cpu":
            raise ValueError(f"runtime 'onnxruntime' times the CPU, got device {str(device)!r}")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]
        if missing:
            raise ValueError(
                f"runtime 'onnxruntime' needs {', '.join(missing)}: pip install 'prunetune[onnx]' (or "
                "scripts/install.sh)"
            )

    def model_call(self, model: nn.Module, inputs: tuple[Any, ...], threads: int) -> Callable[[], Any]:
        return model_runner(model, _one_input(inputs), threads)

    def layer_call(self, layer: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
        return layer_runner(layer, x, threads)

    def in_context(
        self, model: nn.Module, inputs: tuple[Any, ...], layers: Collection[str], threads: int, timing: Timing
    ) -> tuple[float, dict[str, float]]:
        x = _one_input(inputs)
        exported = onnx_bytes(model, x)
        measured = timing(model_runner(exported, x, threads))
        owners = node_owners(exported, _owner_of(layers))
        return measured, node_times(exported, x, threads, owners, timing.times)

    def channel_block(self) -> int:
        """ONNX Runtime's blocked (NCHWc) convolutions take channels in blocks of 16 with AVX-512, of 8 with
        AVX2, and a count off the block falls back to a plain kernel (with layout conversions around it)."""
        if platform.machine() not in ("x86_64", "AMD64"):
            return 1
        flags: set[str] = set()
        with contextlib.suppress(OSError):
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
        return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def _one_input(inputs: tuple[Any, ...]) -> torch.Tensor:
    """The one input tensor an exported model takes (a one-line error otherwise)."""
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        kinds = ", ".join(type(x).__name__ for x in inputs)
        raise ValueError(f"runtime 'onnxruntime' times models of one input tensor, got {len(inputs)} inputs ({kinds})")
    return inputs[0]


def _owner_of(layers: Collection[str]) -> Callable[[str], str | None]:
    """The layer (of ``layers``) an exported initializer belongs to: the longest one whose name, plus a dot,
    starts the initializer's (torch's exporter names ``conv.weight`` after the module; a factor chain's
    ``conv.0.weight`` belongs to the layer ``conv`` it replaced)."""
    by_length = sorted(layers, key=len, reverse=True)

    def owner(tensor: str) -> str | None:
        return next((name for name in by_length if tensor.startswith(name + ".")), None)

    return owner


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path | str, *, axes: Sequence[str] = ("batch",)) -> None:
    """``model`` exported by torch's exporter, quietly, with dynamic ``axes`` (the input's first ones, named;
    a batch by default, a batch and a sequence for a language model) and the exporter's per-node metadata
    (source locations, module names: a third of a small model's file) dropped."""
    import onnx

    dims = {i: torch.export.Dim(name) if i == 0 else torch.export.Dim(name, min=2) for i, name in enumerate(axes)}
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x"],
            dynamic_shapes=(dims,),
            verbose=False,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(path))
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(proto, str(path))


def ort_session(model: Path | str | bytes, threads: int, *, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session of a model file (or its bytes) with ``threads`` intra-op threads (and its
    per-node profiler on, writing under ``profile_prefix``, when given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` exported by :func:`write_onnx` (through a temporary file), as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model, example, path)
        return path.read_bytes()


def model_runner(model: nn.Module | bytes, example: torch.Tensor, threads: int) -> Callable[[], Any]:
    """A call of ``model`` (or of its export, :func:`onnx_bytes`) on ``example`` in ONNX Runtime."""
    session = ort_session(model if isinstance(model, bytes) else onnx_bytes(model, example), threads)
    feed = {"x": example.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def node_owners(model: bytes, owner: Callable[[str], str | None]) -> dict[str, str]:
    """The names ONNX Runtime's fully optimized graph gives the nodes of ``model``, mapped to the layer that
    ``owner`` names for one of each node's inputs (torch's exporter names a layer's weight after its module).

    The names are read from the graph optimized at ONNX Runtime's *extended* level (its fusions, before the
    layout transformer): a node keeps its name there, and the layout transformer names the blocked
    (``com.microsoft.nchwc``) node that replaces it after its first output, plus ``"_nchwc"``. Nodes with no
    owned input (reorders, pooling, shapes) are left out.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "extended.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    out: dict[str, str] = {}
    for node in graph.node:
        layer = next((o for o in map(owner, node.input) if o is not None), None)
        if layer is not None:
            out[node.name] = layer
            out[f"{node.output[0]}_nchwc"] = layer
    return out


def node_times(
    model: bytes, example: torch.Tensor, threads: int, owners: dict[str, str], drive: Callable[..., Any]
) -> dict[str, float]:
    """Each layer's own time (ms) inside ``model`` run whole: ONNX Runtime's per-node profiler
    (``SessionOptions.enable_profiling``), its ``kernel_time`` events summed over the nodes ``owners`` maps to
    the layer (:func:`node_owners`), the median over the timed runs of each node.

    ``drive(fn)`` runs the profiled call ``fn`` (the caller's warm-up and timed runs: ``_Timer.times``); the
    warm-up runs are told apart as the first events of each node and dropped.
    """
    import json
    import statistics

    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(model, threads, profile_prefix=str(Path(tmp) / "ort"))
        feed = {"x": example.detach().cpu().numpy()}
        timed = len(drive(lambda: session.run(None, feed)))
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and name[: -len("_kernel_time")] in owners:
            durations.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1000.0)
    out: dict[str, float] = {}
    for node, ms in durations.items():
        layer = owners[node]
        out[layer] = out.get(layer, 0.0) + statistics.median(ms[-timed:])
    return out


def layer_runner(layer: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    """A call of the conv or linear ``layer`` on ``x`` in ONNX Runtime, as a one-node graph with its weights
    (a factor chain, an ``nn.Sequential`` of conv and linear layers, as one node per layer)."""
    import onnx
    from onnx import TensorProto, helper

    layers = list(layer) if isinstance(layer, nn.Sequential) else [layer]
    nodes: list[Any] = []
    inits: list[Any] = []
    for i, one in enumerate(layers):
        src, dst = ("x" if i == 0 else f"h{i}"), ("y" if i == len(layers) - 1 else f"h{i + 1}")
        more_nodes, more_inits = _layer_nodes(one, src, dst, f"l{i}")
        nodes += more_nodes
        inits += more_inits
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"y{i}" for i in range(x.dim())])],
        initializer=inits,
    )
    # IR version 10 (onnx 1.16's, what opset 21 came with): onnx writes its newest, which ONNX Runtime may not read yet
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(proto)
    session = ort_session(proto.SerializeToString(), threads)
    feed = {"x": x.detach().cpu().numpy().astype(np.float32)}
    return lambda: session.run(None, feed)


def _layer_nodes(layer: nn.Module, src: str, dst: str, prefix: str) -> tuple[list[Any], list[Any]]:
    """The ONNX nodes and initializers (named with ``prefix``) of one conv or linear layer from ``src`` to ``dst``."""
    from onnx import helper, numpy_helper

    w = layer.get_parameter("weight").detach().cpu().numpy()
    bias = layer.get_parameter("bias") if getattr(layer, "bias", None) is not None else None
    wn, bn = f"{prefix}.w", f"{prefix}.b"
    inits = [numpy_helper.from_array(w.T.copy() if isinstance(layer, nn.Linear) else w, wn)]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.detach().cpu().numpy(), bn))
    if isinstance(layer, nn.Linear):
        nodes = [helper.make_node("MatMul", [src, wn], [dst if bias is None else f"{prefix}.xw"])]
        if bias is not None:
            nodes.append(helper.make_node("Add", [f"{prefix}.xw", bn], [dst]))
    elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
        nodes = [helper.make_node("Conv", [src, wn, *([bn] if bias is not None else [])], [dst], **_conv_attrs(layer))]
    else:
        raise PlanError(f"runtime 'onnxruntime' profiles conv and linear layers, not {type(layer).__name__}")
    return nodes, inits


def _conv_attrs(layer: nn.modules.conv._ConvNd) -> dict[str, Any]:
    if layer.padding_mode != "zeros":
        raise PlanError(f"runtime 'onnxruntime' profiles zero-padded convolutions, not {layer.padding_mode!r}")
    attrs: dict[str, Any] = {
        "kernel_shape": list(layer.kernel_size),
        "strides": list(layer.stride),
        "dilations": list(layer.dilation),
        "group": int(layer.groups),
    }
    if isinstance(layer.padding, str):
        attrs["auto_pad"] = "VALID" if layer.padding == "valid" else "SAME_UPPER"
    else:
        attrs["pads"] = list(layer.padding) * 2  # begins, then ends
    return attrs
