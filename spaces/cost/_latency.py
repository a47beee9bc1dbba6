"""Device profiles: per-layer latency tables measured on the machine that will run the model.

MACs do not predict speed: on a 2-core CPU a ResNet-20 at 1/3.9 of its MACs ran
only about twice as fast. NetAdapt's answer (Yang et al., 2018) is a lookup
table per layer, measured on the device; this module builds one for a
:class:`~spaces.ModelSpace` and predicts the latency of any pruning plan from
it, analytically, so ``fit`` can meet a latency cap as it meets a MAC cap.

:func:`profile_space` measures, at batch size and threads given, in the runtime
that will serve the model: torch's eager runtime (``runtime = "torch"``) on a
CPU or CUDA device, or ONNX Runtime on the CPU (``runtime = "onnxruntime"``:
each layer as a one-node ONNX graph, the whole model exported by torch's
exporter; see :mod:`spaces.runtime._ort`):

* **the layer tables.** Every conv and linear layer is rebuilt alone with each
  pair of (input, output) channel counts of a grid (eight fractions of its
  channels, 1/8 to 8/8, on the axes that pruning can change; the layer's
  kernel, stride, padding, dilation and input size as traced; a depthwise
  convolution has one axis, its groups follow its channels) and timed on a
  random input: the median of ``runs`` calls after ``warmup``. Each table is
  then made monotone (a cumulative maximum along both axes), so that fewer
  channels never predict more time and ``fit``'s bisection is sound; the
  noise this removes is reported as :attr:`DeviceProfile.noise`.
* **the tables in context** (NetAdapt's tables measured in the whole graph).
  A layer timed alone does not run as it does inside the model: alone, its
  weights and input sit in cache and ONNX Runtime converts a lone
  convolution's input to its blocked layout and back, which a whole model does
  once; a factor chain's two small layers alone run back to back in cache. So
  the whole model is run at four uniform plans (0, 25, 50 and 75 % of every
  group pruned) while each layer's own time *inside* it is recorded: in torch,
  a forward pre-hook and a forward hook around each conv/linear module (a
  device sync first on CUDA); in ONNX Runtime, its per-node profiler
  (``kernel_time`` events), whose nodes are mapped back to layers through the
  exported weights' names (:func:`spaces.runtime._ort.node_owners`: torch's exporter
  names ``conv.weight`` after the module). Each layer's in-context / alone
  ratio at those plans (:attr:`DeviceProfile.context`, clipped to
  :data:`RATIO_BOUNDS`) is interpolated along the layer's kept fraction
  (the geometric mean of its two axes': :func:`ratio_at`) and multiplies every
  point of its table, which is then made monotone again. Factor chains get
  the same, from four plans that factorize every layer with a chain
  (:data:`CHAIN_CONTEXT`: 0 and 50 % pruned, ranks at 0.3 and 0.7 of the
  break-even rank), interpolated along the kept fraction and the rank's
  fraction of the break-even rank.
* **the rest.** Everything else a forward pass does (BatchNorm, activations,
  additions, pooling, layout conversions, Python dispatch) is not in the
  tables. The whole model's time at the four uniform plans is fitted by
  bounded least squares as ``s * sum(tables) + a + b * x`` on the corrected
  tables, with ``x`` the conv/linear output elements kept, as a fraction of
  the base model's: the tables' remaining in-context factor
  (:attr:`DeviceProfile.scale`, near 1 once the tables are in context), a
  fixed overhead and a part that follows the activations (``s >= 0.05``,
  ``a >= 0`` and ``b >= 0``: the prediction stays positive and monotone in
  every group's channels; a free overhead once predicted a negative time for
  a half-pruned model when the one-node tables overcounted).
* **the channel multiple** (:attr:`DeviceProfile.multiple`, what
  ``round_to = "auto"`` uses): on the conv layer with the most MACs, the output
  channels are swept over 32 consecutive counts; the largest ``m`` in
  (32, 16, 8, 4, 2) for which no count is clearly faster (by more than
  :data:`FREE_SPEEDUP`, in the median) than the next multiple of ``m`` above it
  is the multiple beyond which this device gains no speed: rounding kept
  counts up to it costs no time. ``1`` when every count matters. It is capped
  at a quarter of the narrowest group's channels (a power of two), so every
  group keeps at least four choices of width.

A prediction (:meth:`DeviceProfile.predict`) interpolates each layer's table
bilinearly at the plan's kept counts, each first rounded up to the channel
multiple (a count between multiples runs at the multiple above it: on this
CPU a ResNet-50 pruned at counts that are not multiples of 16 ran 18 % slower
than the interpolation between multiples said), scales their sum by the
in-context factor, adds the rest, and is in milliseconds.

* **factor chains** (``methods``): every layer a listed factorization method
  can factorize is also factorized, through the method's registered contract,
  from a fresh layer of each shape on a coarse grid (four kept fractions, 1/4
  to 4/4, on the axes pruning can change, times five ranks, 0.1 to 0.9 of the
  unpruned layer's break-even rank) and the chain timed as one call
  (:class:`FactorTable`, monotone along all three axes). A plan that
  factorizes a layer reads its chain's table at the pruned counts and the
  largest of its ranks (trilinear, clamped to the grid) in place of the dense
  layer's.

A plan with bits (quantized kernels are not profiled), or with a layer
factorized by a method the profile did not time, is not predicted: its
``Cost.latency`` is ``None`` and a latency budget on it is a one-line error
naming why. A profile is
keyed (:meth:`DeviceProfile.key`) by the model's structure, the device, the
runtime, threads, batch size, the methods whose chains it timed and :data:`PROFILE_FORMAT` (3: tables in
context; a profile cached by an older version is measured again, not misread), and travels as JSON, so a store
can cache it and every worker reuse it.

Written here rather than taken from a library: torch's ``torch.utils.benchmark``
times one callable (used for nothing more than that would be), and no library
builds per-layer tables over pruned channel counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from spaces._errors import PlanError
from spaces.dimensions import removed_modules
from spaces.graph._trace import CONV, LINEAR
from spaces.runtime._registry import check_runtime, runtime as runtime_of
from spaces.runtime._timing import time_calls

if TYPE_CHECKING:
    from spaces._lowrank import LayerGeom
    from spaces._plan import Plan
    from spaces._space import ModelSpace

__all__ = [
    "FRACTIONS",
    "FREE_SPEEDUP",
    "DeviceProfile",
    "FactorTable",
    "LatencyPredictor",
    "LayerTable",
    "device_name",
    "measure_latency",
    "multiple_from",
    "profile_space",
    "recalibrate",
]

FRACTIONS = tuple(i / 8 for i in range(1, 9))  # the grid of kept fractions on each axis a plan can change
FREE_SPEEDUP = 0.03  # a count this much faster (median) than the multiple above it is a real speed-up
MULTIPLES = (32, 16, 8, 4, 2)
CALIBRATION_RATIOS = (0.0, 0.25, 0.5, 0.75)


@dataclass
class LayerTable:
    """One layer's measured latency (ms) over a grid of (input, output) channel counts."""

    ins: list[int]  # input channel counts (one entry: the axis does not change)
    outs: list[int]  # output channel counts
    ms: list[list[float]]  # ms[i][j]: ins[i] inputs, outs[j] outputs, monotone in both
    depthwise: bool = False  # groups follow the channels (``ins`` holds the unpruned count only)
    calls: int = 1  # calls per forward pass (the prediction counts each)

    def at(self, cin: float, cout: float) -> float:
        """Bilinear interpolation (clamped to the grid) at ``cin`` inputs, ``cout`` outputs."""
        if self.depthwise:
            cin = cout
        i0, i1, u = _bracket(self.ins, cin)
        j0, j1, v = _bracket(self.outs, cout)
        m = self.ms
        return (1 - u) * ((1 - v) * m[i0][j0] + v * m[i0][j1]) + u * ((1 - v) * m[i1][j0] + v * m[i1][j1])


@dataclass
class FactorTable:
    """One layer's factor chain (one method) timed over (input, output) channel counts and ranks (ms)."""

    method: str
    ins: list[int]  # input channel counts (one entry: the axis does not change)
    outs: list[int]  # output channel counts
    ranks: list[int]  # the rank each chain was built at (every mode at most this: ``LayerGeom.resolve``)
    ms: list[list[list[float]]]  # ms[i][j][k]: ins[i] inputs, outs[j] outputs, ranks[k]; monotone in all three
    calls: int = 1

    def at(self, cin: float, cout: float, rank: float) -> float:
        """Trilinear interpolation (clamped to the grid) at ``cin`` inputs, ``cout`` outputs, ``rank``."""
        i0, i1, u = _bracket(self.ins, cin)
        j0, j1, v = _bracket(self.outs, cout)
        k0, k1, w = _bracket(self.ranks, rank)
        m = self.ms

        def cell(i: int, j: int) -> float:
            return (1 - w) * m[i][j][k0] + w * m[i][j][k1]

        return (1 - u) * ((1 - v) * cell(i0, j0) + v * cell(i0, j1)) + u * ((1 - v) * cell(i1, j0) + v * cell(i1, j1))


def _up(count: int, multiple: int, full: int) -> int:
    """``count`` rounded up to a multiple of ``multiple``, never above the layer's ``full`` count."""
    return min(full, -(-count // multiple) * multiple)


def _bracket(grid: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices around ``x`` in ascending ``grid`` and the weight of the upper one."""
    if x <= grid[0] or len(grid) == 1:
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    hi = int(np.searchsorted(grid, x, side="left"))
    lo = hi - 1
    return lo, hi, (x - grid[lo]) / (grid[hi] - grid[lo])


@dataclass
class DeviceProfile:
    """A model's per-layer latency tables on one device (see the module docs)."""

    model: str  # the model's structure fingerprint (:func:`structure_key`)
    device: str  # e.g. "cpu: x86_64, 2 cores" or "cuda: NVIDIA H200"
    runtime: str  # "torch" (eager) or "onnxruntime" (spaces.runtime._ort)
    threads: int
    batch: int
    layers: dict[str, LayerTable]
    rest: tuple[float, float]  # other ops: a + b * (kept output elements / base)
    base_ms: float  # the base model, measured end to end (median)
    multiple: int  # the channel multiple beyond which the device gains no speed
    noise: float = 0.0  # the largest relative drop the monotone tables removed
    scale: float = 1.0  # the tables' in-context factor, fitted with the rest (1: layers run as they were timed)
    calibration: list[tuple[float, float, float]] = field(default_factory=list)  # ratio, measured, predicted
    factored: dict[str, dict[str, FactorTable]] = field(default_factory=dict)  # layer -> method -> its chain's table
    # in-context / alone ratios that corrected the tables: "layer" or "layer@method" -> [[position, level, ratio]]
    context: dict[str, list[list[float]]] = field(default_factory=dict)
    block: int = 1  # the runtime's channel block: counts off a multiple of it run slower kernels (1: none)

    @property
    def methods(self) -> list[str]:
        """The factorization methods whose chains the profile timed (none: it predicts plans without ranks only)."""
        return sorted({m for tables in self.factored.values() for m in tables})

    @property
    def key(self) -> str:
        """What the profile is valid for: model structure, device, runtime, threads, batch, methods (a sha256 hex)."""
        return profile_key(self.model, self.device, self.runtime, self.threads, self.batch, self.methods)

    @staticmethod
    def key_for(
        space: ModelSpace,
        device: torch.device,
        *,
        threads: int,
        batch: int,
        runtime: str = "torch",
        methods: Sequence[str] = (),
    ) -> str:
        """The key a profile of ``space`` measured on ``device`` would have (to look it up before measuring)."""
        return profile_key(structure_key(space), device_name(device), runtime, threads, batch, profiled(space, methods))

    def predict(self, space: ModelSpace, plan: Plan) -> float:
        """The predicted latency (ms) of ``space.apply(plan)`` on this device: pruning plans, and factorized
        layers whose method the profile timed (a one-line PlanError says why not otherwise)."""
        keep = space.keep_counts(plan)
        resolved = space.costs.resolve(plan, keep)
        why = self.unpredictable(resolved)
        if why is not None:
            raise PlanError(f"latency cannot be predicted for this plan: {why}")
        return self.predict_keep(space, keep, factor_chains(resolved), removed_modules(resolved))

    def unpredictable(self, resolved: Mapping[str, Any]) -> str | None:
        """Why the latency of a plan resolved as ``resolved`` (``{dimension key: part}``) cannot be predicted,
        or ``None``: a held dimension whose layers are not factor chains (bits: quantized kernels are not
        profiled), or a layer factorized by a method the profile has no table of. A dimension that removes
        modules (depth) is predictable: the removed layers are not timed."""
        from spaces.dimensions import Removing, dimensions, role_of

        other = [
            d.key
            for d in dimensions()
            if d.fit_rule == "held" and not d.factor_chains and resolved.get(d.key) and not role_of(d, Removing)
        ]
        if other:
            return f"it has {', '.join(other)}, which device profiles do not time"
        for name, (method, _) in factor_chains(resolved).items():
            if method not in self.factored.get(name, {}):
                timed = ", ".join(self.methods) or "none"
                return (
                    f"layer {name!r} is factorized by {method}, which the device profile did not time (methods "
                    f"timed: {timed}; profile with methods=[{method!r}], or space.rank in a study)"
                )
        return None

    def predict_keep(
        self,
        space: ModelSpace,
        keep: np.ndarray,
        ranks: Mapping[str, Any] | None = None,
        removed: tuple[str, ...] = (),
    ) -> float:
        """The predicted latency (ms) when group ``i`` keeps ``keep[i]`` channels and the layers in ``ranks``
        (``{layer: (method, ranks)}``, as plans resolve them) are factorized; every other layer is dense, but
        those inside the ``removed`` modules (depth), which are not there."""
        tables, share = self.tables_at(space, keep, ranks, removed)
        a, b = self.rest
        return self.scale * tables + a + b * share

    def tables_at(
        self,
        space: ModelSpace,
        keep: np.ndarray,
        ranks: Mapping[str, Any] | None = None,
        removed: tuple[str, ...] = (),
    ) -> tuple[float, float]:
        """The layer tables' time (ms) at ``keep`` (and ``ranks``, without the layers inside ``removed``), and
        the share of the base model's conv/linear output elements kept (what the rest's slope multiplies): one
        pass over the layers."""
        from spaces.dimensions import inside

        total, kept, base = 0.0, 0.0, 0.0
        for name, table in self.layers.items():
            positions = space._trace.spatial.get(name, 0)
            if removed and inside(name, removed):
                base += table.outs[-1] * positions
                continue
            cout, cin = _channels(space, name, keep)
            # a count between multiples runs at the multiple above it (the device's kernels: see the multiple)
            up_in, up_out = _up(cin, self.multiple, table.ins[-1]), _up(cout, self.multiple, table.outs[-1])
            if ranks and name in ranks:
                method, modes = ranks[name]
                total += table.calls * self.factored[name][method].at(up_in, up_out, max(modes))
            else:
                total += table.calls * table.at(up_in, up_out) * self.off_block(name, cin, cout)
            kept, base = kept + cout * positions, base + table.outs[-1] * positions
        return total, kept / (base or 1.0)

    def off_block(self, name: str, cin: int, cout: int) -> float:
        """How much slower layer ``name`` runs in context with ``cin`` inputs and ``cout`` outputs than its
        corrected table says, because a count is off the runtime's channel block (:attr:`block`): its
        in-context ratio off the block (level 1 of its context) over the one on it (level 0), clipped to
        :data:`OFF_BLOCK_BOUNDS`; 1.0 on the block."""
        table = self.layers[name]
        if self.block <= 1 or not _misaligned(table, cin, cout, self.block):
            return 1.0
        points = self.context.get(name, [])
        u = _position(table, _up(cin, self.multiple, table.ins[-1]), _up(cout, self.multiple, table.outs[-1]))
        return float(np.clip(ratio_at(points, u, 1.0) / ratio_at(points, u, 0.0), *OFF_BLOCK_BOUNDS))

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> DeviceProfile:
        d = dict(json.loads(text) if isinstance(text, str) else text)
        d["layers"] = {k: LayerTable(**v) for k, v in d["layers"].items()}
        d["factored"] = {k: {m: FactorTable(**t) for m, t in v.items()} for k, v in d.get("factored", {}).items()}
        d["rest"] = tuple(d["rest"])
        d["calibration"] = [tuple(c) for c in d.get("calibration", [])]
        return cls(**d)


class LatencyPredictor:
    """``profile.predict_keep`` bound to a space: what the cost model calls (picklable, unlike a lambda)."""

    def __init__(self, space: ModelSpace, profile: DeviceProfile) -> None:
        self.space, self.profile = space, profile

    def __call__(self, keep: np.ndarray, resolved: Mapping[str, Any] | None = None) -> float | None:
        """The predicted latency at ``keep`` with the dimensions' ``resolved`` parts; ``None``: not predictable
        (:meth:`DeviceProfile.unpredictable` says why)."""
        resolved = resolved or {}
        if self.profile.unpredictable(resolved) is not None:
            return None
        return self.profile.predict_keep(self.space, keep, factor_chains(resolved), removed_modules(resolved))


def factor_chains(resolved: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{layer: (method, ranks)}`` of every factorized layer in a plan's resolved parts (the dimensions whose
    layers are factor chains: :attr:`spaces.dimensions.Dimension.factor_chains`)."""
    from spaces.dimensions import dimensions

    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for d in dimensions():
        if d.factor_chains:
            out.update(resolved.get(d.key) or {})
    return out


PROFILE_FORMAT = 3  # part of the key: a profile measured by an older version is measured again (3: in context)


def profile_key(model: str, device: str, runtime: str, threads: int, batch: int, methods: Sequence[str] = ()) -> str:
    """The key of a profile; ``methods`` (the factor chains it timed) enter it only when there are any, so a
    pruning-only profile keeps the key it always had."""
    parts: list[Any] = [PROFILE_FORMAT, model, device, runtime, threads, batch]
    if methods:
        parts.append(sorted(methods))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def profiled(space: ModelSpace, methods: Sequence[str]) -> list[str]:
    """The ``methods`` a profile of ``space`` times chains of: those that apply to one of its layers with a
    break-even rank of at least 2 (a one-line ValueError names an unknown method)."""
    from spaces.factorization import method_names

    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise ValueError(f"methods must be among {', '.join(method_names())}, got {', '.join(map(repr, unknown))}")
    return sorted({m for m in methods for g in space.layers if m in g.methods and g.max_useful_rank(m) >= 2})


def structure_key(space: ModelSpace) -> str:
    """The model's structure as latency sees it: each conv/linear layer's shape and input, and the groups."""
    parts = [
        (name, str(space.model.get_submodule(name)), list(shape), calls)
        for name, (shape, calls) in _input_shapes(space).items()
    ]
    parts.append([(g.id, g.channels) for g in space.groups])  # type: ignore[arg-type]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def device_name(device: torch.device) -> str:
    """The device as a profile names it: the CPU's model (``/proc/cpuinfo``, else the architecture) and core
    count, or the CUDA device's name."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), model)
    return f"cpu: {model}, {os.cpu_count()} cores"


def profile_space(
    space: ModelSpace,
    *,
    model: str | None = None,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    batch: int = 1,
    runs: int = 7,
    warmup: int = 2,
    runtime: str = "torch",
    methods: Sequence[str] = (),
) -> DeviceProfile:
    """Measure ``space``'s device profile (see the module docs): tables, the rest, the channel multiple.

    ``model`` names the structure in the key (default: :func:`structure_key`); ``threads`` sets torch's
    CPU threads while measuring (default: torch's current number), and ONNX Runtime's; ``runs`` timed calls
    per point; ``runtime``: ``"torch"`` (eager) or ``"onnxruntime"`` (see :mod:`spaces.runtime._ort`); ``methods``:
    the factorization methods whose chains are timed too (:class:`FactorTable`), so plans with ranks of
    those methods are predicted.
    """
    if batch < 1 or runs < 1 or warmup < 0:
        raise ValueError(f"batch and runs must be >= 1 and warmup >= 0, got {batch}, {runs}, {warmup}")
    check_runtime(runtime, device, space.example_inputs)  # before any table is measured
    methods = profiled(space, methods)  # an unknown method: a one-line error before anything is measured
    dev = torch.device(device)
    old = torch.get_num_threads()
    n = threads or old
    torch.set_num_threads(n)
    try:
        timer = _Timer(dev, runs, warmup, runtime=runtime, threads=n)
        shapes = _input_shapes(space)
        layers = {name: _table(space, name, call, batch, timer) for name, call in shapes.items()}
        factored = _factor_tables(space, shapes, methods, batch, timer)
        chains = [t for tables in factored.values() for t in tables.values()]
        noise = max([_make_monotone(t) for t in layers.values()] + [_make_monotone(t) for t in chains], default=0.0)
        prof = DeviceProfile(
            model=model or structure_key(space),
            device=device_name(dev),
            runtime=runtime,
            threads=n,
            batch=batch,
            layers=layers,
            rest=(0.0, 0.0),
            base_ms=0.0,
            multiple=_multiple(space, shapes, batch, timer, channel_block(runtime)),
            noise=noise,
            factored=factored,
            block=channel_block(runtime),
        )
        _calibrate(space, prof, batch, timer)
        return prof
    finally:
        torch.set_num_threads(old)


class _Timer:
    """The median time (ms) of a callable on one device and runtime: ``warmup`` calls, then ``runs`` timed ones."""

    def __init__(
        self, device: torch.device, runs: int, warmup: int, *, runtime: str = "torch", threads: int = 1
    ) -> None:
        self.device, self.runs, self.warmup = device, runs, warmup
        self.runtime, self.threads = runtime, threads

    def model_call(self, model: nn.Module, inputs: tuple[Any, ...]) -> Callable[[], Any]:
        """A call of ``model`` on ``inputs`` in this timer's runtime."""
        return runtime_of(self.runtime).model_call(model, inputs, self.threads)

    def layer_call(self, layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        """A call of the conv or linear ``layer`` on ``x`` in this timer's runtime."""
        return runtime_of(self.runtime).layer_call(layer, x, self.threads)

    def chain_call(self, chain: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        """A call of a factor chain on ``x`` in this timer's runtime (for ONNX Runtime, a graph of one node per
        layer of the chain, written directly as a table's layers are: exporting each grid point would take
        seconds apiece)."""
        return runtime_of(self.runtime).layer_call(chain, x, self.threads)

    def in_context(
        self, model: nn.Module, inputs: tuple[Any, ...], layers: Collection[str]
    ) -> tuple[float, dict[str, float]]:
        """``model``'s median time (ms) run whole, and the own time (ms, median over the timed runs) of each
        of ``layers`` (module names; a factor chain is timed as the module at its layer's name) inside it:
        torch's forward hooks, or ONNX Runtime's per-node profiler on the same export."""
        return runtime_of(self.runtime).in_context(model, inputs, layers, self.threads, self)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def times(self, fn: Callable[[], Any]) -> list[float]:
        """The ``runs`` timed calls (ms), after ``warmup`` calls that are not timed."""
        with torch.inference_mode():
            return time_calls(fn, runs=self.runs, warmup=self.warmup, sync=self.sync)

    def __call__(self, fn: Callable[[], Any]) -> float:
        return statistics.median(self.times(fn))


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    device: torch.device | str = "cpu",
    runs: int = 25,
    warmup: int = 5,
    runtime: str = "torch",
    threads: int | None = None,
) -> dict[str, float]:
    """``model``'s end-to-end latency on ``example_inputs``: the median, 10th and 90th percentile (ms) of
    ``runs`` calls after ``warmup`` untimed ones, in inference mode (what a front member's prediction is
    checked against), in ``runtime`` (``"onnxruntime"``: exported first, with ``threads`` threads, default
    torch's)."""
    from spaces.cost._cost import as_tuple

    check_runtime(runtime, device)
    dev = torch.device(device)
    inputs = tuple(x.to(dev) if isinstance(x, torch.Tensor) else x for x in as_tuple(example_inputs))
    model = model.to(dev).eval()
    timer = _Timer(dev, runs, warmup, runtime=runtime, threads=threads or torch.get_num_threads())
    times = sorted(timer.times(timer.model_call(model, inputs)))
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"measured_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1], "runs": float(runs)}


def _input_shapes(space: ModelSpace) -> dict[str, tuple[tuple[int, ...], int]]:
    """Every conv/linear layer with a table: its input shape at its first call, and its calls per forward pass."""
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    names = {m: n for n, m in space.model.named_modules()}

    def hook(mod: nn.Module, inputs: tuple[Any, ...], _: Any) -> None:
        name = names[mod]
        first, calls = shapes.get(name, (tuple(inputs[0].shape), 0))
        shapes[name] = (first, calls + 1)

    handles = [m.register_forward_hook(hook) for m in space.model.modules() if _profiled(m)]
    try:
        with torch.no_grad():
            space.model(*space.example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _profiled(m: nn.Module) -> bool:
    """Layers with a table: Conv1d/2d/3d and Linear (transposed convs are left to the rest)."""
    return isinstance(m, CONV[:3] + LINEAR) and not isinstance(m, CONV[3:])


def _channels(space: ModelSpace, name: str, keep: np.ndarray) -> tuple[int, int]:
    """Layer ``name``'s (output, input) channels when groups keep ``keep``."""
    shape = space.costs.weight_shape(name, keep)
    mod = space.model.get_submodule(name)
    assert shape is not None
    if isinstance(mod, nn.Linear):
        return shape[0], shape[1]
    assert isinstance(mod, nn.modules.conv._ConvNd)
    if _is_depthwise(mod):
        return shape[0], shape[0]
    return shape[0], shape[1] * mod.groups


def _is_depthwise(mod: nn.modules.conv._ConvNd) -> bool:
    return mod.groups > 1 and mod.groups == mod.in_channels


def _axis(count: int, changes: bool, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    return sorted({max(1, round(count * f)) for f in fractions}) if changes else [count]


def _table(space: ModelSpace, name: str, call: tuple[tuple[int, ...], int], batch: int, timer: _Timer) -> LayerTable:
    """Layer ``name`` timed alone over its grid of channel counts (``call``: its input shape, calls per forward)."""
    mod = space.model.get_submodule(name)
    shape, calls = call
    full = space.costs.channels
    cout0, cin0 = _channels(space, name, full)
    lo_out, lo_in = _channels(space, name, np.ones_like(full))
    dw = not isinstance(mod, nn.Linear) and _is_depthwise(mod)  # type: ignore[arg-type]
    outs = _axis(cout0, lo_out != cout0)
    if dw:  # one axis: the groups follow the channels
        ms = [[_time_layer(mod, co, co, shape, batch, timer) for co in outs]]
        return LayerTable(ins=[cin0], outs=outs, ms=ms, depthwise=True, calls=calls)
    ins = _axis(cin0, lo_in != cin0)
    ms = [[_time_layer(mod, ci, co, shape, batch, timer) for co in outs] for ci in ins]
    return LayerTable(ins=ins, outs=outs, ms=ms, calls=calls)


def _time_layer(mod: nn.Module, cin: int, cout: int, shape: tuple[int, ...], batch: int, timer: _Timer) -> float:
    """``mod``'s kind of layer with ``cin`` inputs and ``cout`` outputs, timed on a random input of ``shape``."""
    layer = _rebuilt(mod, cin, cout).to(timer.device).eval()
    return timer(timer.layer_call(layer, _random_input(mod, shape, cin, batch, timer.device)))


def _random_input(mod: nn.Module, shape: tuple[int, ...], cin: int, batch: int, device: torch.device) -> torch.Tensor:
    """A random input of ``mod``'s traced ``shape`` with ``cin`` channels (the last axis of a Linear's) and
    ``batch`` times its batch."""
    return torch.randn(_scaled(shape, cin, batch, channel_dim=-1 if isinstance(mod, nn.Linear) else 1), device=device)


FACTOR_CHANNELS = (0.25, 0.5, 0.75, 1.0)  # a factor table's kept fractions on each axis pruning can change
RANK_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # its ranks, as fractions of the unpruned layer's break-even rank


def _factor_tables(
    space: ModelSpace,
    shapes: Mapping[str, tuple[tuple[int, ...], int]],
    methods: Sequence[str],
    batch: int,
    timer: _Timer,
) -> dict[str, dict[str, FactorTable]]:
    """Per layer that ``methods`` can factorize below break-even, per method, its factor chain's table."""
    out: dict[str, dict[str, FactorTable]] = {}
    for name, call in shapes.items():
        geom = space._trace.geoms.get(name)
        for method in methods:
            if geom is not None and method in geom.methods and geom.max_useful_rank(method) >= 2:
                out.setdefault(name, {})[method] = _factor_table(space, name, method, call, batch, timer)
    return out


def _factor_table(
    space: ModelSpace, name: str, method: str, call: tuple[tuple[int, ...], int], batch: int, timer: _Timer
) -> FactorTable:
    """Layer ``name`` factorized by ``method``, timed over a coarse grid of channel counts and of ranks: the
    chain ``method`` builds (through its registered contract) from a fresh layer of each shape."""
    mod = space.model.get_submodule(name)
    shape, calls = call
    full = space.costs.channels
    geom, low = space.costs.pruned_geom(name, full), space.costs.pruned_geom(name, np.ones_like(full))
    ins = _axis(geom.cin, low.cin != geom.cin, FACTOR_CHANNELS)
    outs = _axis(geom.cout, low.cout != geom.cout, FACTOR_CHANNELS)
    ranks = _axis(geom.max_useful_rank(method), True, RANK_FRACTIONS)
    ms = [
        [[_time_chain(mod, geom.with_channels(co, ci), method, r, shape, batch, timer) for r in ranks] for co in outs]
        for ci in ins
    ]
    return FactorTable(method=method, ins=ins, outs=outs, ranks=ranks, ms=ms, calls=calls)


def _time_chain(
    mod: nn.Module, geom: LayerGeom, method: str, rank: int, shape: tuple[int, ...], batch: int, timer: _Timer
) -> float:
    """The factor chain of ``mod``'s kind of layer at ``geom``'s channels and ``rank`` (every mode at most it),
    timed on a random input of the layer's traced ``shape``."""
    from spaces.factorization import factor_method

    layer = _rebuilt(mod, geom.cin, geom.cout)
    chain = factor_method(method).factorize(layer, geom, geom.resolve(method, rank)).to(timer.device).eval()  # type: ignore[arg-type]
    return timer(timer.chain_call(chain, _random_input(mod, shape, geom.cin, batch, timer.device)))


def _rebuilt(mod: nn.Module, cin: int, cout: int) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return nn.Linear(cin, cout, bias=mod.bias is not None)
    assert isinstance(mod, nn.modules.conv._ConvNd)
    groups = cout if _is_depthwise(mod) else mod.groups
    return type(mod)(  # type: ignore[call-arg]
        cin,
        cout,
        mod.kernel_size,
        stride=mod.stride,
        padding=mod.padding,
        dilation=mod.dilation,
        groups=groups,
        bias=mod.bias is not None,
        padding_mode=mod.padding_mode,
    )


def _scaled(shape: tuple[int, ...], channels: int, batch: int, *, channel_dim: int) -> list[int]:
    out = list(shape)
    out[channel_dim] = channels
    out[0] *= batch
    return out


def _make_monotone(t: LayerTable | FactorTable) -> float:
    """Make ``t.ms`` non-decreasing along every axis (cumulative max); the largest relative change it made."""
    raw = np.array(t.ms, dtype=np.float64)
    mono = raw
    for axis in range(raw.ndim):
        mono = np.maximum.accumulate(mono, axis=axis)
    t.ms = mono.tolist()
    return float(np.max((mono - raw) / mono)) if mono.size else 0.0


def _multiple(
    space: ModelSpace, shapes: Mapping[str, tuple[tuple[int, ...], int]], batch: int, timer: _Timer, block: int = 1
) -> int:
    """The channel multiple beyond which this device gains no speed, swept on the conv with the most MACs, and
    at least the runtime's channel ``block`` (a lone layer does not show what leaving the block costs in a
    whole model); at most a quarter of the narrowest group either way."""
    full = space.costs.channels
    best, best_macs = None, -1
    for name in shapes:
        mod = space.model.get_submodule(name)
        cout, cin = _channels(space, name, full)
        changes = _channels(space, name, np.ones_like(full))[0] != cout
        if isinstance(mod, nn.Linear) or _is_depthwise(mod) or not changes or cout < 64:  # type: ignore[arg-type]
            continue
        macs = space._trace.spatial[name] * int(mod.weight.numel())  # type: ignore[operator]
        if macs > best_macs:
            best, best_macs = name, macs
    if best is None:
        return 1
    mod = space.model.get_submodule(best)
    _, cin = _channels(space, best, full)
    hi = (_channels(space, best, full)[0] // 32) * 32
    counts = list(range(hi - 31, hi + 1))
    rounds: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(3):  # interleaved rounds: a slow moment of the machine spreads over every count
        for k in counts:
            rounds[k].append(_time_layer(mod, cin, k, shapes[best][0], batch, timer))
    found = max(block, multiple_from({k: statistics.median(v) for k, v in rounds.items()}))
    narrowest = min((g.channels for g in space.groups if g.id not in space._trace.heads), default=1)
    return min(found, max(1, 2 ** int(math.log2(max(1, narrowest // 4)))))  # every group keeps >= 4 choices


def multiple_from(times: Mapping[int, float]) -> int:
    """The largest ``m`` in :data:`MULTIPLES` for which counts are not faster than the next multiple of ``m``.

    ``times`` maps consecutive channel counts to their latency; for each ``m``, the relative speed-up of every
    count that is not a multiple of ``m`` over the multiple of ``m`` above it (when swept) is taken; ``m`` is
    free when the median speed-up is at most :data:`FREE_SPEEDUP`. ``1`` when no ``m`` is.
    """
    for m in MULTIPLES:
        gains = [
            (times[up] - t) / times[up]
            for k, t in times.items()
            if k % m and (up := math.ceil(k / m) * m) in times and times[up] > 0
        ]
        if gains and statistics.median(gains) <= FREE_SPEEDUP:
            return m
    return 1


def _fit_calibration(tables: Sequence[float], xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``(s, a, b)`` of the least-squares fit ``y = s * tables + a + b * x`` with ``s >= 0.05``, ``a >= 0`` and
    ``b >= 0`` (scipy's bounded least squares, ``lsq_linear``).

    ``s`` is the layers' in-context factor: a layer timed alone may pay what the
    whole model pays once (ONNX Runtime converts every lone convolution's input
    to its blocked layout and back) or miss what it pays in context; the bounds
    keep every prediction positive and monotone in every group's kept channels.
    """
    from scipy.optimize import lsq_linear

    a_mat = np.array([[t, 1.0, x] for t, x in zip(tables, xs, strict=True)])
    fit = lsq_linear(a_mat, np.array(ys, dtype=np.float64), bounds=([0.05, 0.0, 0.0], [np.inf, np.inf, np.inf]))
    s, a, b = (float(v) for v in fit.x)
    return s, a, b


def _batched(space: ModelSpace, batch: int, device: torch.device) -> tuple[Any, ...]:
    """The space's example inputs repeated to ``batch`` along their first axis, on ``device``."""
    from spaces.cost._cost import as_tuple

    return tuple(
        x.repeat(batch, *([1] * (x.dim() - 1))).to(device) if isinstance(x, torch.Tensor) else x
        for x in as_tuple(space.example_inputs)
    )


def _calibrate(space: ModelSpace, prof: DeviceProfile, batch: int, timer: _Timer) -> None:
    """Time the whole model at uniform plans, each layer inside it too; correct the tables by the layers'
    in-context ratios, then fit ``s * tables + a + b * x`` on the corrected tables (see the module docs)."""
    inputs = _batched(space, batch, timer.device)
    measured: list[tuple[float, float, np.ndarray]] = []
    for ratio in CALIBRATION_RATIOS:
        plan = space.uniform_plan(ratio)
        keep = space.keep_counts(plan)
        whole, inside = timer.in_context(space.apply(plan).to(timer.device).eval(), inputs, prof.layers)
        _record_layers(space, prof, keep, inside)
        measured.append((ratio, whole, keep))
    _off_block_context(space, prof, inputs, timer)
    _chain_context(space, prof, inputs, timer)
    _apply_context(space, prof)
    points = [(ratio, whole, *prof.tables_at(space, keep)) for ratio, whole, keep in measured]
    s, a, b = _fit_calibration([t for *_, t, _ in points], [x for *_, x in points], [m for _, m, _, _ in points])
    prof.scale, prof.rest = s, (a, b)
    prof.base_ms = points[0][1]
    prof.calibration = [(r, m, s * t + a + b * x) for r, m, t, x in points]


def recalibrate(space: ModelSpace, prof: DeviceProfile, measured: Sequence[tuple[Plan, float]]) -> DeviceProfile:
    """A copy of ``prof`` whose ``s * tables + a + b * x`` is refitted on its calibration points and on
    ``measured``: ``(plan, ms)`` of whole models of ``space`` timed end to end on the profile's device and runtime
    (a study's front members, :mod:`search.study._remeasure`). The tables are kept; the calibration's
    predictions are the new fit's.

    The calibration points are read again at their uniform plans as ``space`` rounds them now (a study's
    ``round_to = "auto"`` may round a few counts otherwise than when they were timed).
    """
    import dataclasses

    points = [(space.uniform_plan(ratio), ms) for ratio, ms, _ in prof.calibration] + list(measured)
    tables, shares = [], []
    for plan, _ in points:
        keep = space.keep_counts(plan)
        resolved = space.costs.resolve(plan, keep)
        t, x = prof.tables_at(space, keep, factor_chains(resolved), removed_modules(resolved))
        tables.append(t)
        shares.append(x)
    s, a, b = _fit_calibration(tables, shares, [ms for _, ms in points])
    calibration = [(r, m, s * t + a + b * x) for (r, m, _), t, x in zip(prof.calibration, tables, shares, strict=False)]
    return dataclasses.replace(prof, scale=s, rest=(a, b), calibration=calibration)


RATIO_BOUNDS = (0.25, 4.0)  # an in-context / alone ratio outside these is taken as noise and clipped
CHAIN_CONTEXT = ((0.0, 0.3), (0.0, 0.7), (0.5, 0.3), (0.5, 0.7))  # (uniform prune ratio, rank fraction) per plan


def _ratio(inside: float, alone: float) -> float:
    return float(np.clip(inside / alone, *RATIO_BOUNDS)) if alone > 0 else 1.0


def _position(table: LayerTable | FactorTable, cin: float, cout: float) -> float:
    """Where counts ``(cin, cout)`` lie on a table: the geometric mean of the kept fractions of its axes that
    change (1.0: the unpruned layer), the coordinate its in-context ratios are interpolated along."""
    f_out = cout / table.outs[-1]
    f_in = cin / table.ins[-1] if len(table.ins) > 1 else 1.0
    return math.sqrt(f_out * f_in)


def _record_layers(space: ModelSpace, prof: DeviceProfile, keep: np.ndarray, inside: Mapping[str, float]) -> None:
    """Add each dense layer's in-context / alone ratio at ``keep`` (the table read as a prediction reads it):
    level 0 on the runtime's channel block, level 1 off it (:meth:`DeviceProfile.off_block`)."""
    for name, ms in inside.items():
        table = prof.layers[name]
        cout, cin = _channels(space, name, keep)
        up_in, up_out = _up(cin, prof.multiple, table.ins[-1]), _up(cout, prof.multiple, table.outs[-1])
        alone = table.calls * table.at(up_in, up_out)
        level = 1.0 if prof.block > 1 and _misaligned(table, cin, cout, prof.block) else 0.0
        prof.context.setdefault(name, []).append([_position(table, up_in, up_out), level, _ratio(ms, alone)])


OFF_BLOCK_RATIOS = (0.0, 0.5)  # the uniform plans whose counts, one channel fewer, time layers off the block
# off the block a layer runs at least as slowly as on it, and at most 3x (a ratio of two noisy ratios is clipped)
OFF_BLOCK_BOUNDS = (1.0, 3.0)


def channel_block(name: str) -> int:
    """The channel block of runtime ``name``'s fast convolutions on this CPU (ONNX Runtime's blocked kernels:
    16 with AVX-512, 8 with AVX2); 1 for torch and other CPUs."""
    return runtime_of(name).channel_block()


def _misaligned(table: LayerTable, cin: int, cout: int, block: int) -> bool:
    """Whether a layer runs off the channel ``block`` at these counts (an input axis that never changes, like
    the image's channels, does not count)."""
    return cout % block != 0 or (len(table.ins) > 1 and not table.depthwise and cin % block != 0)


def _off_block_context(space: ModelSpace, prof: DeviceProfile, inputs: tuple[Any, ...], timer: _Timer) -> None:
    """With a channel block (:attr:`DeviceProfile.block`), time the layers inside the whole model at counts
    one channel below :data:`OFF_BLOCK_RATIOS`' uniform plans and record the ratios of those off the block
    as level 1 of their context (what :meth:`DeviceProfile.off_block` reads)."""
    if prof.block <= 1:
        return
    for ratio in OFF_BLOCK_RATIOS:
        keep = space.keep_counts(space.uniform_plan(ratio))
        keep = np.where(keep > prof.block, keep - 1, keep)
        _, inside = timer.in_context(
            space.apply(space.plan_from_keep(keep)).to(timer.device).eval(), inputs, prof.layers
        )
        _record_layers(space, prof, keep, inside)


def _chain_context(space: ModelSpace, prof: DeviceProfile, inputs: tuple[Any, ...], timer: _Timer) -> None:
    """Time each method's factor chains inside the whole model at :data:`CHAIN_CONTEXT`'s plans (every layer
    with a chain factorized at a fraction of its break-even rank) and record their in-context ratios."""
    for method in prof.methods:
        layers = sorted(n for n, tables in prof.factored.items() if method in tables)
        for ratio, fraction in CHAIN_CONTEXT:
            plan = space.uniform_plan(ratio).replace(
                rank=dict.fromkeys(layers, fraction), method=dict.fromkeys(layers, method)
            )
            keep = space.keep_counts(plan)
            chains = factor_chains(space.costs.resolve(plan, keep))
            _, inside = timer.in_context(space.apply(plan).to(timer.device).eval(), inputs, chains)
            for name, ms in inside.items():
                table = prof.factored[name][method]
                cout, cin = _channels(space, name, keep)
                up_in = _up(cin, prof.multiple, prof.layers[name].ins[-1])
                up_out = _up(cout, prof.multiple, prof.layers[name].outs[-1])
                alone = table.calls * table.at(up_in, up_out, max(chains[name][1]))
                point = [_position(table, up_in, up_out), fraction, _ratio(ms, alone)]
                prof.context.setdefault(f"{name}@{method}", []).append(point)


def ratio_at(points: Sequence[Sequence[float]], position: float, level: float = 0.0) -> float:
    """The in-context ratio at ``position`` (and rank ``level``) from measured ``[position, level, ratio]``
    points: piecewise linear in the position among the points of each level, linear between levels, both
    clamped to the points' range (1.0 without points)."""
    levels: dict[float, list[tuple[float, float]]] = {}
    for u, w, r in points:
        levels.setdefault(w, []).append((u, r))
    if not levels:
        return 1.0

    def along(w: float) -> float:
        us, rs = zip(*sorted(levels[w]), strict=True)
        return float(np.interp(position, us, rs))

    ws = sorted(levels)
    return float(np.interp(level, ws, [along(w) for w in ws]))


def _apply_context(space: ModelSpace, prof: DeviceProfile) -> None:
    """Scale every table point by the in-context ratio interpolated at it, then make the tables monotone again."""
    for name, table in prof.layers.items():
        points = prof.context.get(name, [])
        table.ms = [
            [v * ratio_at(points, _position(table, ci, co)) for co, v in zip(table.outs, row, strict=True)]
            for ci, row in zip(table.ins, table.ms, strict=True)
        ]
        _make_monotone(table)
    for name, tables in prof.factored.items():
        for method, chain in tables.items():
            _correct_chain(space, name, chain, prof.context.get(f"{name}@{method}", []))


def _correct_chain(space: ModelSpace, name: str, chain: FactorTable, points: Sequence[Sequence[float]]) -> None:
    """Scale a factor chain's table by its in-context ratios: a grid rank's level is its fraction of the
    break-even rank at the grid point's channels (what a plan's rank fraction resolves to there)."""
    full = space.costs.pruned_geom(name, space.costs.channels)
    out = []
    for ci, plane in zip(chain.ins, chain.ms, strict=True):
        rows = []
        for co, ranks in zip(chain.outs, plane, strict=True):
            u, even = _position(chain, ci, co), max(1, full.with_channels(co, ci).max_useful_rank(chain.method))
            rows.append([v * ratio_at(points, u, r / even) for r, v in zip(chain.ranks, ranks, strict=True)])
        out.append(rows)
    chain.ms = out
    _make_monotone(chain)
