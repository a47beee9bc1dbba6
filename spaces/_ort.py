"""ONNX Runtime as a latency runtime: a model or one layer, exported and run on the CPU.

A device profile (:mod:`spaces._latency`) can be measured in the runtime that
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
import tempfile
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces._errors import PlanError

__all__ = ["OPSET", "RUNTIMES", "check_runtime", "layer_runner", "model_runner", "ort_session", "write_onnx"]

OPSET = 21
IR_VERSION = 10
RUNTIMES = ("torch", "onnxruntime")


def check_runtime(runtime: str, device: torch.device | str = "cpu") -> None:
    """A one-line error unless ``runtime`` is one of :data:`RUNTIMES`, usable on ``device`` and installed."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise ValueError(f"runtime 'onnxruntime' times the CPU, got device {str(device)!r}")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]
        if missing:
            raise ValueError(
                f"runtime 'onnxruntime' needs {', '.join(missing)}: pip install 'prunetune[onnx]' (or "
                "scripts/install.sh)"
            )


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path | str) -> None:
    """``model`` exported by torch's exporter, quietly, with a dynamic batch and the exporter's per-node metadata
    (source locations, module names: a third of a small model's file) dropped."""
    import onnx

    batch = torch.export.Dim("batch")
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x"],
            dynamic_shapes=({0: batch},),
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


def ort_session(model: Path | str | bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session of a model file (or its bytes) with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def model_runner(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], Any]:
    """A call of ``model`` on ``example`` in ONNX Runtime (exported through a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model, example, path)
        session = ort_session(path.read_bytes(), threads)
    feed = {"x": example.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def layer_runner(layer: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    """A call of the conv or linear ``layer`` on ``x`` in ONNX Runtime, as a one-node graph with its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = layer.get_parameter("weight").detach().cpu().numpy()
    bias = layer.get_parameter("bias") if getattr(layer, "bias", None) is not None else None
    inits = [numpy_helper.from_array(w.T.copy() if isinstance(layer, nn.Linear) else w, "w")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.detach().cpu().numpy(), "b"))
    if isinstance(layer, nn.Linear):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if bias is None else "xw"])]
        if bias is not None:
            nodes.append(helper.make_node("Add", ["xw", "b"], ["y"]))
    elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
        nodes = [
            helper.make_node("Conv", ["x", "w", *(["b"] if bias is not None else [])], ["y"], **_conv_attrs(layer))
        ]
    else:
        raise PlanError(f"runtime 'onnxruntime' profiles conv and linear layers, not {type(layer).__name__}")
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
