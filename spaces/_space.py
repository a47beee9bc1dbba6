"""``ModelSpace``: the compression space of one model (channel groups, factorizable layers).

Mechanism only: tracing, surgery (:meth:`ModelSpace.apply`: prune, then
factorize with :mod:`spaces._lowrank`) and the analytic cost model
(:meth:`ModelSpace.cost`). Choosing plans (uniform, fit) lives in
``_policy.py``, the allocator in ``_allocate.py``.

How it works
------------
1. The caller's model is deep-copied once; the copy is traced with
   torch-pruning's ``DependencyGraph`` (with :mod:`spaces._tp_compat`
   installed). Every dependency group is kept with, for each member layer, the
   member indices that go with each root channel, all relative to the
   *original* shapes.
2. For every (layer, pruning function) pair, a one-channel probe on a copy of
   that layer tells which parameter dimensions the function shrinks. With the
   spatial size each conv/linear layer sees (one forward pass with hooks), the
   cost of any plan is a polynomial in the channels each group keeps:
   ``MACs = sum(S_layer * numel(weight))``, ``params = sum(numel(p))``. It is
   evaluated with numpy, in microseconds, without building a model.
3. ``apply`` removes, on a fresh copy, the union of the indices every group
   asks of each (layer, function) pair, in one call per pair.
4. With ``verify=True`` (default) the space checks itself when built: the base
   MACs measured by fvcore must equal the analytic ones (layers called through
   ``F.linear``/``F.conv2d`` outside modules would be missed, so such a model is
   refused), and a half-pruned model must compute exactly what the original
   computes with the pruned channels zeroed (*masked equivalence*). A group that
   fails is excluded from the space with its reason in :attr:`excluded`, so a
   wrong index mapping in the library can never produce a wrong model.

Excluded by construction (listed in :attr:`ModelSpace.excluded`): groups that
touch a grouped, non-depthwise convolution (torch-pruning's input pruning of
those is wrong), groups whose index mapping is not uniform, and the classifier's
output layer (found by walking back from the model's outputs).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces._cost import Cost, _as_tuple, measure_cost
from spaces._errors import PlanError, UnsupportedModelError, first_line
from spaces._lowrank import LayerGeom, factorize_layer
from spaces._plan import IMPORTANCES, Plan

__all__ = ["Group", "ModelSpace"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LINEAR = (nn.Linear,)
_CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)
Factors = dict[str, tuple[str, tuple[int, ...]]]  # layer -> (method, ranks)


@dataclass(frozen=True)
class Group:
    """A set of channels that must be pruned together.

    ``id`` is the name of the group's root layer (the first layer, in module
    order, whose output channels the group removes); ``layers`` lists every
    member (layers whose outputs, inputs or normalisation statistics shrink);
    ``channels`` is the number of channels of the group.
    """

    id: str
    layers: tuple[str, ...]
    channels: int


@dataclass
class _Item:
    target: str  # module name or parameter name
    is_param: bool
    handler: Any  # torch-pruning pruning function (bound method)
    is_out: bool
    idxs: np.ndarray  # member indices, aligned with root_idxs
    root_idxs: np.ndarray


def _is_grouped_conv(m: nn.Module) -> bool:
    return isinstance(m, _CONV) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, '')}"


class ModelSpace:
    """What can change in a model: its channel groups and factorizable layers, and what plans cost.

    Args:
        model: the model; it is deep-copied and never modified.
        example_inputs: a tensor or a tuple of tensors the model is called with;
            costs are counted for exactly this input (batch included).
        ignored_layers: names (or modules) of layers whose output channels are
            never pruned; the classifier's output layer is always added.
        importance: ``"l1"`` (default: the summed L1 norm of each channel's
            filters over the group's producing conv/linear layers), ``"l2"``
            (the same with squared L2), or ``"bn_scale"`` (summed ``|gamma|`` of
            the group's BatchNorms; groups without BatchNorm fall back to L1).
        round_to: kept channel counts are rounded to a multiple of this.
        verify: check the space on construction (see the module docs).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        ignored_layers: Iterable[str | nn.Module] = (),
        importance: str = "l1",
        round_to: int = 1,
        verify: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
        self.example_inputs = _as_tuple(example_inputs)
        self.importance = importance
        self.round_to = round_to
        self._model = copy.deepcopy(model).eval()
        self._names = {m: n for n, m in self._model.named_modules()}
        self._order = {n: i for i, n in enumerate(self._names.values())}

        self._spatial = self._record_spatial()
        ignored = self._resolve_ignored(model, ignored_layers)
        self.excluded: dict[str, str] = {}

        from spaces import _tp_compat

        _tp_compat.install()
        import torch_pruning as tp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self._dg = tp.DependencyGraph().build_dependency(
                    self._model, example_inputs=self.example_inputs, verbose=False
                )
            except Exception as exc:  # the library's tracing failed on this model
                raise UnsupportedModelError(f"torch-pruning cannot trace the model: {_first_line(exc)}") from exc
            ignored |= self._classifier_layers()
            raw_groups = list(
                self._dg.get_all_groups(
                    ignored_layers=[self._model.get_submodule(n) for n in sorted(ignored)],
                    root_module_types=_CONV + _LINEAR,
                )
            )
        self.ignored_layers = tuple(sorted(ignored, key=lambda n: self._order.get(n, 0)))
        self._groups: list[Group] = []
        self._items: list[list[_Item]] = []
        for g in raw_groups:
            self._add_group(g)
        order = sorted(range(len(self._groups)), key=lambda i: self._order.get(self._groups[i].id, 1 << 30))
        self._groups = [self._groups[i] for i in order]  # in module order, so tables read top-down
        self._items = [self._items[i] for i in order]
        self._param_dims: dict[tuple[str, Any], list[tuple[str, int]]] = {}
        self._build_cost_model()
        self._importance_cache: dict[str, list[np.ndarray]] = {}
        self._energy_cache: dict[str, np.ndarray] = {}
        self.last_allocation: Any = None  # spaces.Allocation of the last allocate() call
        if verify:
            self._verify()

    # ----------------------------------------------------------------- tracing
    def _record_spatial(self) -> dict[str, int]:
        """One forward pass; per conv/linear layer, the positions it is applied at.

        Also records which layers can be factorized and their geometry.
        """
        spatial: dict[str, int] = {}
        shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
        hooks = []

        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            name = self._names[mod]
            x = inputs[0]
            if isinstance(mod, _LINEAR):
                s = x.numel() // mod.in_features
            elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                s = x.shape[0] * math.prod(x.shape[2:])
            else:
                s = output.shape[0] * math.prod(output.shape[2:])
            spatial[name] = spatial.get(name, 0) + int(s)
            shapes.setdefault(name, []).append((tuple(x.shape), tuple(output.shape)))

        for m in self._model.modules():
            if isinstance(m, _CONV + _LINEAR):
                hooks.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self._base_output = self._model(*self.example_inputs)
        except Exception as exc:
            shapes_txt = ", ".join(str(tuple(x.shape)) for x in self.example_inputs if isinstance(x, torch.Tensor))
            raise ValueError(f"example_inputs of shape {shapes_txt} do not fit the model: {_first_line(exc)}") from None
        finally:
            for h in hooks:
                h.remove()
        if not isinstance(self._base_output, torch.Tensor):
            raise UnsupportedModelError(f"the model must return one tensor, got {type(self._base_output).__name__}")
        self._geoms: dict[str, LayerGeom] = {}
        self.not_factorizable: dict[str, str] = {}
        for name, calls in shapes.items():
            mod = self._model.get_submodule(name)
            reason = None
            if len(calls) != 1:
                reason = f"called {len(calls)} times per forward pass"
            elif isinstance(mod, nn.Linear):
                rows = spatial[name]
                self._geoms[name] = LayerGeom(name, "linear", mod.out_features, mod.in_features, 1, 1, rows, rows, rows)
                continue
            elif type(mod) is not nn.Conv2d:
                reason = f"{type(mod).__name__} is not factorizable (Conv2d and Linear are)"
            elif mod.groups != 1:
                kind = "depthwise" if mod.groups == mod.in_channels else "grouped"
                reason = f"{kind} convolution (groups={mod.groups}) is not factorizable"
            elif mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                reason = "only zero padding given as numbers is supported"
            if reason is not None:
                self.not_factorizable[name] = reason
                continue
            (xs, ys) = calls[0]
            n = xs[0]
            assert isinstance(mod, nn.Conv2d)
            self._geoms[name] = LayerGeom(
                name,
                "conv",
                mod.out_channels,
                mod.in_channels,
                mod.kernel_size[0],
                mod.kernel_size[1],
                s_in=n * xs[2] * xs[3],
                s_mid=n * ys[2] * xs[3],
                s_out=n * ys[2] * ys[3],
            )
        return spatial

    def _resolve_ignored(self, original: nn.Module, layers: Iterable[str | nn.Module]) -> set[str]:
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        orig_names = {m: n for n, m in original.named_modules()}
        out: set[str] = set()
        for layer in layers:
            name = orig_names.get(layer) if isinstance(layer, nn.Module) else layer
            if not isinstance(name, str) or name not in self._order:
                raise ValueError(f"ignored layer {layer!r} is not a submodule of the model")
            out.add(name)
        return out

    def _classifier_layers(self) -> set[str]:
        """Conv/linear layers whose outputs reach a model output through no other such layer."""
        import torch_pruning as tp

        found: set[str] = set()
        stack = [n for n in self._dg.module2node.values() if not n.outputs]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node.module, _CONV + _LINEAR):
                found.add(self._names[node.module])
                continue
            if node.type == tp.ops.OPTYPE.PARAMETER:
                continue
            stack.extend(node.inputs)
        return found

    def _add_group(self, g: Any) -> None:
        dg = self._dg
        items: list[_Item] = []
        reason = None
        for k, (dep, idxs) in enumerate(g):
            target = dep.target.module
            is_param = isinstance(target, nn.Parameter)
            if is_param:
                name = dg._param_to_name[target]
            elif target not in self._names:
                continue  # torch-pruning's pseudo-module for a parameter-free op (add, cat, relu, ...)
            else:
                name = self._names[target]
                if _is_grouped_conv(target):
                    reason = f"touches grouped convolution {name!r} (groups={target.groups}), not pruned"
            handler = dep.handler
            items.append(
                _Item(
                    target=name,
                    is_param=is_param,
                    handler=handler,
                    is_out=bool(dg.is_out_channel_pruning_fn(handler)),
                    idxs=np.asarray(idxs, dtype=np.int64),
                    root_idxs=np.asarray(g[k].root_idxs, dtype=np.int64),
                )
            )
        producers = [it.target for it in items if it.is_out and not it.is_param]
        producers.sort(key=lambda n: self._order.get(n, 1 << 30))
        gid = producers[0] if producers else items[0].target
        channels = len(items[0].idxs)
        for it in items:
            counts = np.bincount(it.root_idxs, minlength=channels)
            if reason is None and len(counts) == channels and counts.min() != counts.max():
                reason = f"index mapping into {it.target!r} is not uniform"
            if reason is None and it.handler is None:
                reason = f"no pruning function for {it.target!r}"
        layers = tuple(dict.fromkeys(sorted((it.target for it in items), key=lambda n: self._order.get(n, 1 << 30))))
        if reason is not None:
            self.excluded[gid] = reason
            return
        self._groups.append(Group(id=gid, layers=layers, channels=channels))
        self._items.append(items)

    # -------------------------------------------------------------- cost model
    def _probe(self, it: _Item) -> list[tuple[str, int]]:
        """Which (parameter name, dim) pairs shrink by one when ``it.handler`` removes one index."""
        key = (it.target, it.handler)
        if key in self._param_dims:
            return self._param_dims[key]
        out: list[tuple[str, int]] = []
        if it.is_param:
            p = self._model.get_parameter(it.target)
            new = it.handler(nn.Parameter(p.detach().clone()), [0])
            out = [(it.target, d) for d, (a, b) in enumerate(zip(p.shape, new.shape, strict=False)) if a != b]
        else:
            mod = self._model.get_submodule(it.target)
            before = {n: tuple(p.shape) for n, p in mod.named_parameters(recurse=False)}
            probe = copy.deepcopy(mod)
            it.handler(probe, [0])
            for n, p in probe.named_parameters(recurse=False):
                full = f"{it.target}.{n}" if it.target else n
                for d, (a, b) in enumerate(zip(before[n], p.shape, strict=False)):
                    if a != b:
                        out.append((full, d))
        self._param_dims[key] = out
        return out

    def _build_cost_model(self) -> None:
        self._channels = np.array([g.channels for g in self._groups], dtype=np.int64)
        self._gid_index = {g.id: i for i, g in enumerate(self._groups)}
        params = list(self._model.named_parameters())
        self._param_index = {n: i for i, (n, _) in enumerate(params)}
        ndim = max([p.dim() for _, p in params] + [1])
        self._ndim = ndim
        base = np.ones((len(params), ndim), dtype=np.int64)
        for i, (_, p) in enumerate(params):
            base[i, : p.dim()] = p.shape
        mac_w = np.zeros(len(params), dtype=np.int64)
        byte_w = np.array([p.element_size() for _, p in params], dtype=np.int64)
        for name, s in self._spatial.items():
            wname = f"{name}.weight" if name else "weight"
            if wname in self._param_index:
                mac_w[self._param_index[wname]] = s
        # M[i*ndim + d, g]: elements of dim d of parameter i removed per channel removed from group g
        m = np.zeros((len(params) * ndim, len(self._groups)), dtype=np.int64)
        for g, (group, items) in enumerate(zip(self._groups, self._items, strict=False)):
            for it in items:
                per_root = len(it.idxs) // group.channels
                for pname, d in self._probe(it):
                    m[self._param_index[pname] * ndim + d, g] += per_root
        self._base_dims = base.reshape(-1)
        self._m = m
        self._mac_w = mac_w
        self._byte_w = byte_w
        self.base_cost = self._cost_of_removed(np.zeros(len(self._groups), dtype=np.int64))
        # MACs of the layers each group touches (for reports)
        touched = m.reshape(len(params), ndim, -1).any(axis=1)  # [param, group]
        self._group_macs = (mac_w * base.prod(axis=1)) @ touched

    def _cost_of_removed(self, removed: np.ndarray, factors: Factors | None = None) -> Cost:
        dims = (self._base_dims - self._m @ removed).reshape(-1, self._ndim)
        numel = dims.prod(axis=1)
        macs, params, nbytes = int(self._mac_w @ numel), int(numel.sum()), int(self._byte_w @ numel)
        for name, (method, ranks) in (factors or {}).items():
            i = self._param_index[f"{name}.weight"]
            geom = self._geoms[name].with_channels(dims[i, 0], dims[i, 1])
            dm, dp = geom.dense_cost()
            fm, fp = geom.factor_cost(method, ranks)
            macs += fm - dm
            params += fp - dp
            nbytes += (fp - dp) * int(self._byte_w[i])
        return Cost(macs=macs, params=params, bytes=nbytes)

    def _pruned_geom(self, name: str, keep: np.ndarray) -> LayerGeom:
        i = self._param_index[f"{name}.weight"]
        rows = slice(i * self._ndim, i * self._ndim + 2)
        cout, cin = self._base_dims[rows] - self._m[rows] @ (self._channels - keep)
        return self._geoms[name].with_channels(cout, cin)

    def _factors(self, plan: Plan, keep: np.ndarray) -> Factors:
        """Per factorized layer, (method, ranks) on its pruned shape after the break-even cap."""
        out = {}
        for name, spec in plan.rank.items():
            method = plan.method_of(name)
            self._check_layer(name, method, spec)
            geom = self._pruned_geom(name, keep)
            ranks = geom.cap(method, geom.resolve(method, spec))
            if ranks is not None:
                out[name] = (method, ranks)
        return out

    def _check_layer(self, name: str, method: str, spec: int | float) -> None:
        geom = self._geoms.get(name)
        if geom is None:
            if name in self.not_factorizable:
                raise PlanError(f"layer {name!r} cannot be factorized: {self.not_factorizable[name]}")
            example = next(iter(self._geoms), "")
            raise PlanError(f"unknown layer {name!r}; factorizable layers are Conv2d/Linear names like {example!r}")
        if method not in geom.methods:
            raise PlanError(
                f"method {method!r} does not apply to layer {name!r} ({geom.kind} {geom.kh}x{geom.kw}); "
                f"it takes {', '.join(geom.methods)}"
            )
        full = max(geom.full_ranks(method))
        if isinstance(spec, int) and spec > full:
            raise PlanError(f"rank {spec} of layer {name!r} is above its full rank {full} for {method!r}")

    # ------------------------------------------------------------ public API
    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(self._groups)

    def group(self, gid: str) -> Group:
        for g in self._groups:
            if g.id == gid:
                return g
        raise PlanError(self._unknown_group(gid))

    def _unknown_group(self, gid: str) -> str:
        if gid in self.excluded:
            return f"group {gid!r} is excluded from the space: {self.excluded[gid]}"
        ids = [g.id for g in self._groups]
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        return f"unknown group id {gid!r}; the space has {len(ids)} groups: {shown}"

    def macs_share(self, gid: str) -> float:
        """Share of the base MACs in layers whose size depends on group ``gid``."""
        g = [x.id for x in self._groups].index(self.group(gid).id)
        return float(self._group_macs[g] / self.base_cost.macs) if self.base_cost.macs else 0.0

    def allowed_keeps(self, group: Group, round_to: int | None = None) -> np.ndarray:
        """The channel counts a group may keep under ``round_to`` (ascending)."""
        rt = round_to or self.round_to
        c = group.channels
        if rt <= 1:
            return np.arange(1, c + 1)
        if c <= rt:
            return np.array([c])
        vals = list(range(rt, c + 1, rt))
        if vals[-1] != c:
            vals.append(c)
        return np.array(vals)

    def keep_counts(self, plan: Plan) -> np.ndarray:
        """Channels each group keeps under ``plan`` (validates the plan)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a spaces.Plan, got {type(plan).__name__}")
        ids = self._gid_index
        for gid in plan.prune:
            if gid not in ids:
                raise PlanError(self._unknown_group(gid))
        rt = plan.round_to or self.round_to
        keep = np.array([g.channels for g in self._groups], dtype=np.int64)
        for gid, ratio in plan.prune.items():
            i = ids[gid]
            c = self._groups[i].channels
            k = c - math.floor(ratio * c + 0.5)
            if k < 1:
                largest = (c - 1) / c
                raise PlanError(
                    f"prune ratio {ratio} leaves group {gid!r} ({c} channels) empty; "
                    f"ratios must keep at least one channel (< {largest + 0.5 / c:.4g})"
                )
            if rt > 1 and c > rt:
                k = min(c, max(rt, rt * math.floor(k / rt + 0.5)))
            keep[i] = k
        return keep

    def validate(self, plan: Plan) -> Plan:
        """Raise :class:`PlanError` if ``plan`` does not fit this space; return it."""
        keep = self.keep_counts(plan)
        self._factors(plan, keep)
        return plan

    def plan_from_keep(self, keep: Sequence[int] | np.ndarray, *, like: Plan | None = None) -> Plan:
        """The plan that keeps exactly ``keep[i]`` channels of group ``i``."""
        prune = {}
        for g, k in zip(self._groups, keep, strict=False):
            if k < g.channels:
                prune[g.id] = (g.channels - int(k)) / g.channels
        return Plan(
            prune=prune,
            importance=(like.importance if like and like.importance else self.importance),
            round_to=(like.round_to if like and like.round_to else self.round_to),
            rank=dict(like.rank) if like else {},
            method=dict(like.method) if like else {},
        )

    def cost(self, plan: Plan) -> Cost:
        """The analytic cost of ``apply(plan)``: no model is built."""
        keep = self.keep_counts(plan)
        return self._cost_of_keep(keep, self._factors(plan, keep) if plan.rank else None)

    def _cost_of_keep(self, keep: np.ndarray, factors: Factors | None = None) -> Cost:
        return self._cost_of_removed(self._channels - keep, factors)

    def _byte_of(self, name: str) -> int:
        return int(self._byte_w[self._param_index[f"{name}.weight"]])

    def _energy(self, name: str) -> np.ndarray:
        """Cumulative share of squared singular values of the layer's (unpruned) kernel."""
        cache = self._energy_cache
        if name not in cache:
            w = self._model.get_parameter(f"{name}.weight").detach().double()
            s2 = torch.linalg.svdvals(w.reshape(w.shape[0], -1)).pow(2).numpy()
            total = s2.sum()
            cache[name] = np.cumsum(s2) / total if total > 0 else np.linspace(1 / len(s2), 1.0, len(s2))
        return cache[name]

    def allocate(self, budget: Any, *, prune: bool = True, rank: bool = True, time_limit: float = 10.0) -> Plan:
        """The COBLA-style allocator's plan (see :func:`spaces.allocate`); details in ``last_allocation``."""
        from spaces._allocate import allocate

        self.last_allocation = allocate(self, budget, prune=prune, rank=rank, time_limit=time_limit)
        return self.last_allocation.plan

    @property
    def layers(self) -> tuple[LayerGeom, ...]:
        """The factorizable layers, unpruned (see :class:`spaces.LayerGeom`)."""
        return tuple(self._geoms.values())

    def layer(self, name: str) -> LayerGeom:
        if name not in self._geoms:
            self._check_layer(name, "svd", 1)
        return self._geoms[name]

    def measure_base_cost(self) -> Cost:
        """The base model's cost as fvcore measures it."""
        return measure_cost(self._model, self.example_inputs)

    # ------------------------------------------------------------ importance
    def _channel_order(self, importance: str) -> list[np.ndarray]:
        """Per group, root channel indices from most to least important."""
        if importance in self._importance_cache:
            return self._importance_cache[importance]
        orders = []
        for group, items in zip(self._groups, self._items, strict=False):
            scores = self._scores(group, items, importance)
            orders.append(np.argsort(-scores, kind="stable"))
        self._importance_cache[importance] = orders
        return orders

    @torch.no_grad()
    def _scores(self, group: Group, items: list[_Item], importance: str) -> np.ndarray:
        scores = np.zeros(group.channels, dtype=np.float64)
        if importance == "bn_scale":
            for it in items:
                if it.is_param or not it.is_out:
                    continue
                mod = self._model.get_submodule(it.target)
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
                    vals = mod.weight.detach().abs().double().numpy()[it.idxs]
                    np.add.at(scores, it.root_idxs, vals)
            if scores.any():
                return scores
        p = 2 if importance == "l2" else 1
        for it in items:
            if it.is_param or not it.is_out:
                continue
            mod = self._model.get_submodule(it.target)
            if not isinstance(mod, _CONV + _LINEAR):
                continue
            w = mod.weight.detach().double()
            if isinstance(mod, _CONV) and mod.transposed:
                w = w.transpose(0, 1)
            norms = w.flatten(1).abs().pow(p).sum(1).numpy()[it.idxs]
            np.add.at(scores, it.root_idxs, norms)
        return scores

    # ------------------------------------------------------------ surgery
    def _removals(self, plan: Plan, keep: np.ndarray) -> dict[tuple[str, Any], tuple[_Item, np.ndarray]]:
        orders = self._channel_order(plan.importance or self.importance)
        todo: dict[tuple[str, Any], tuple[_Item, np.ndarray]] = {}
        for group, items, order, k in zip(self._groups, self._items, orders, keep, strict=False):
            if k >= group.channels:
                continue
            removed = order[k:]
            for it in items:
                idx = it.idxs[np.isin(it.root_idxs, removed)]
                key = (it.target, it.handler)
                if key in todo:
                    idx = np.union1d(todo[key][1], idx)
                todo[key] = (it, idx)
        return todo

    def apply(self, plan: Plan) -> nn.Module:
        """A new model with ``plan`` applied; the space's model is untouched."""
        return self._prune(copy.deepcopy(self._model), plan)

    def _prune(self, model: nn.Module, plan: Plan) -> nn.Module:
        """Apply ``plan`` in place to ``model``, a copy of the space's model: prune, then factorize."""
        keep = self.keep_counts(plan)
        factors = self._factors(plan, keep) if plan.rank else {}
        for (name, handler), (it, idx) in self._removals(plan, keep).items():
            idx_list = sorted(int(i) for i in np.unique(idx))
            if it.is_param:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, attr, handler(getattr(parent, attr), idx_list))
            else:
                handler(model.get_submodule(name), idx_list)
        for name, (method, ranks) in factors.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attr, factorize_layer(getattr(parent, attr), method, ranks))
        return model

    def masked_model(self, plan: Plan) -> nn.Module:
        """The base model with the channels ``plan`` removes set to output zero.

        For groups without channel-mixing normalisation (LayerNorm/GroupNorm),
        ``masked_model(plan)`` computes what ``apply(plan)`` computes.
        """
        return self._mask(copy.deepcopy(self._model), plan)

    @torch.no_grad()
    def _mask(self, model: nn.Module, plan: Plan) -> nn.Module:
        keep = self.keep_counts(plan)
        for (name, _), (it, idx) in self._removals(plan, keep).items():
            if not it.is_out or len(idx) == 0:
                continue
            index = torch.as_tensor(idx, dtype=torch.long)
            for pname, d in self._probe(it):
                model.get_parameter(pname).index_fill_(d, index, 0.0)
            if not it.is_param:
                mod = model.get_submodule(name)
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                    mod.running_mean.index_fill_(0, index, 0.0)
        return model

    # ------------------------------------------------------------ self-check
    def _checkable(self, items: list[_Item]) -> bool:
        for it in items:
            if it.is_param:
                continue
            mod = self._model.get_submodule(it.target)
            if isinstance(mod, _CHANNEL_MIXING_NORMS):
                return False
        return True

    @torch.no_grad()
    def _scrambled(self) -> nn.Module:
        """A copy with well-scaled random weights, so that every channel matters.

        Index mappings do not depend on weight values; an untrained model (or a
        trained one with dead units) may hide a wrong mapping behind outputs
        that ignore most channels, a randomised copy does not.
        """
        gen = torch.Generator().manual_seed(0)
        model = copy.deepcopy(self._model)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / max(fan_in, 1)))
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                assert m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        return model

    def _check(self, plan: Plan, vmodel: nn.Module, vbase: torch.Tensor) -> str | None:
        """None if ``plan`` prunes ``vmodel`` (a scrambled copy) correctly, else the reason."""
        try:
            with torch.no_grad():
                out = self._prune(copy.deepcopy(vmodel), plan)(*self.example_inputs)
        except Exception as exc:
            return f"the pruned model fails: {_first_line(exc)}"
        if not isinstance(out, torch.Tensor) or out.shape != vbase.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return f"pruning changes the output shape to {shape}"
        masked_ids = {g for g in plan.prune if self._checkable(self._items[self._gindex(g)])}
        if masked_ids:
            sub = Plan({g: r for g, r in plan.prune.items() if g in masked_ids}, plan.importance, plan.round_to)
            with torch.no_grad():
                if sub != plan:
                    out = self._prune(copy.deepcopy(vmodel), sub)(*self.example_inputs)
                ref = self._mask(copy.deepcopy(vmodel), sub)(*self.example_inputs)
            # float noise is relative to the outputs; a wrong mapping errs on the
            # scale of the pruning's own effect (masked minus base)
            scale = float(ref.abs().max())
            effect = float((ref - vbase).abs().max())
            err = float((out - ref).abs().max())
            if not err <= 1e-5 * scale + 1e-3 * effect + 1e-30:
                return f"pruned channels are not the ones removed downstream (max error {err:.3g})"
        return None

    def _gindex(self, gid: str) -> int:
        if gid not in self._gid_index:
            raise PlanError(self._unknown_group(gid))
        return self._gid_index[gid]

    def _verify(self) -> None:
        measured = self.measure_base_cost()
        if measured.macs != self.base_cost.macs:
            ops = ", ".join(sorted(measured.skipped_ops)) or "none"
            raise UnsupportedModelError(
                f"the model computes {measured.macs} conv/linear MACs but its conv/linear modules account for "
                f"{self.base_cost.macs}: some convolutions or linear maps run outside modules "
                f"(e.g. F.linear on a module's weight); ops seen: {ops}"
            )
        if measured.params != self.base_cost.params:
            raise UnsupportedModelError(
                f"parameter count {measured.params} differs from the traced {self.base_cost.params}"
            )
        if not self._groups:
            return
        vmodel = self._scrambled()
        with torch.no_grad():
            vbase = vmodel(*self.example_inputs)
        if not torch.isfinite(vbase).all():
            raise UnsupportedModelError("the model's outputs are not finite on example_inputs with random weights")
        half = Plan({g.id: 0.5 for g in self._groups if g.channels > 1})
        if self._check(half, vmodel, vbase) is None:
            self._check_params(half)
            return
        bad: dict[str, str] = {}
        for g in list(self._groups):
            if g.channels < 2:
                continue
            reason = self._check(Plan({g.id: 0.5}), vmodel, vbase)
            if reason is not None:
                bad[g.id] = reason
        if not bad:
            raise UnsupportedModelError("pruning all groups together fails although each group alone works")
        keep = [i for i, g in enumerate(self._groups) if g.id not in bad]
        self.excluded.update(bad)
        self._groups = [self._groups[i] for i in keep]
        self._items = [self._items[i] for i in keep]
        self._importance_cache.clear()
        self._build_cost_model()
        self._check_params(Plan({g.id: 0.5 for g in self._groups if g.channels > 1}))

    def _check_params(self, plan: Plan) -> None:
        model = self.apply(plan)
        got = sum(p.numel() for p in model.parameters())
        want = self.cost(plan).params
        if got != want:
            raise UnsupportedModelError(
                f"the pruned model has {got} parameters, the cost model predicts {want}; "
                "a layer type changes shape in a way the space does not model"
            )

    def __repr__(self) -> str:
        return (
            f"ModelSpace({type(self._model).__name__}, groups={len(self._groups)}, "
            f"excluded={len(self.excluded)}, base={self.base_cost})"
        )

    # ------------------------------------------------------------ policies
    def uniform_plan(self, ratio: float) -> Plan:
        """See :func:`spaces.uniform_plan`."""
        from spaces._policy import uniform_plan

        return uniform_plan(self, ratio)

    def fit(self, plan: Plan, budget: Any) -> Plan:
        """See :func:`spaces.fit`."""
        from spaces._policy import fit

        return fit(self, plan, budget)
