"""``CostModel``: what any plan of a traced model costs, analytically (no model is built).

For every (member, pruning function) pair of a group, a one-channel probe on a
copy of that layer tells which parameter dimensions the function shrinks
(:meth:`CostModel.param_dims`). With the positions each conv/linear layer is
applied at (from the trace), the cost of a plan is a polynomial in the channels
each group keeps: ``MACs = sum(S_layer * numel(weight))`` plus an attention's
products (a multiple of its heads' total width) and the constant MACs of the
products outside head-prunable attentions (:mod:`spaces.graph._attention`),
``params = sum(numel(p))``, ``bytes = sum(numel(p) * element_size)``, evaluated
with numpy in microseconds (:meth:`CostModel.dense_state`). Every other plan
dimension (:mod:`spaces.dimensions`) is resolved on the kept channels and
changes that state in turn (:meth:`CostModel.cost_resolved`): a factorized
layer's dense term is replaced by its factor chain's
(:meth:`spaces.LayerGeom.factor_cost`) on the layer's pruned shape.

The cost model also does the plan arithmetic every policy needs: channels kept
per group (:meth:`keep_counts`, with ``round_to``), the counts a group may keep
(:meth:`allowed_keeps`), the plan for given counts (:meth:`plan_from_keep`),
the pruned geometry of a factorizable layer (:meth:`pruned_geom`) and each
dimension's resolution of a plan (:meth:`resolve`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from spaces._errors import PlanError
from spaces._lowrank import LayerGeom
from spaces._plan import Plan
from spaces.cost._cost import Cost
from spaces.dimensions import CostState, Dimension, Removing, dimensions, inside, role_of, voided
from spaces.graph._trace import Group, Item, Trace

__all__ = ["CostModel", "Ranks"]


def _meta_parameter(p: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)


def _meta_copy(mod: nn.Module) -> nn.Module:
    """A copy of ``mod`` whose parameters and buffers are shapes only (meta tensors): a probe copies no data."""
    memo: dict[int, object] = {id(p): _meta_parameter(p) for p in mod.parameters()}
    memo.update((id(b), torch.empty_like(b, device="meta")) for b in mod.buffers())
    return copy.deepcopy(mod, memo)


Ranks = dict[str, tuple[str, tuple[int, ...]]]  # factorized layer -> (method, ranks); dense layers are absent


class CostModel:
    """The analytic cost of plans over one :class:`~spaces.graph._trace.Trace` (see the module docs).

    ``importance`` and ``round_to`` are the space's defaults, carried into the
    plans it makes. Call :meth:`rebuild` after the trace's groups change.
    """

    def __init__(self, trace: Trace, *, importance: str, round_to: int) -> None:
        self.trace = trace
        self.importance = importance
        self.round_to = round_to
        self._param_dims: dict[tuple[str, Any], list[tuple[str, int]]] = {}
        # the predicted latency (ms) at kept counts and resolved dimensions (ModelSpace.attach_profile); None: none
        self.latency_of: Callable[[np.ndarray, Mapping[str, Any]], float | None] | None = None
        self.rebuild()

    # ------------------------------------------------------------ the polynomial
    def param_dims(self, it: Item) -> list[tuple[str, int]]:
        """Which (parameter name, dim) pairs shrink by one when ``it.handler`` removes one index."""
        key = (it.target, it.handler)
        if key in self._param_dims:
            return self._param_dims[key]
        model = self.trace.model
        out: list[tuple[str, int]] = []
        if it.is_param:
            p = model.get_parameter(it.target)
            try:
                new = it.handler(_meta_parameter(p), [0])
            except Exception:  # a handler that reads values: probed on a real copy
                new = it.handler(nn.Parameter(p.detach().clone()), [0])
            out = [(it.target, d) for d, (a, b) in enumerate(zip(p.shape, new.shape, strict=False)) if a != b]
        else:
            mod = model.get_submodule(it.target)
            before = {n: tuple(p.shape) for n, p in mod.named_parameters(recurse=False)}
            try:
                probe = _meta_copy(mod)
                it.handler(probe, [0])
            except Exception:  # as above
                probe = copy.deepcopy(mod)
                it.handler(probe, [0])
            for n, p in probe.named_parameters(recurse=False):
                full = f"{it.target}.{n}" if it.target else n
                for d, (a, b) in enumerate(zip(before[n], p.shape, strict=False)):
                    if a != b:
                        out.append((full, d))
        self._param_dims[key] = out
        return out

    def rebuild(self) -> None:
        """(Re)build the polynomial from the trace's current groups."""
        tr = self.trace
        self.groups = tuple(tr.groups)
        self.channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        self._gid_index = {g.id: i for i, g in enumerate(self.groups)}
        params = list(tr.model.named_parameters())
        self._param_index = {n: i for i, (n, _) in enumerate(params)}
        ndim = max([p.dim() for _, p in params] + [1])
        self._ndim = ndim
        base = np.ones((len(params), ndim), dtype=np.int64)
        for i, (_, p) in enumerate(params):
            base[i, : p.dim()] = p.shape
        mac_w = np.zeros(len(params), dtype=np.int64)
        byte_w = np.array([p.element_size() for _, p in params], dtype=np.int64)
        for name, s in tr.spatial.items():
            wname = f"{name}.weight" if name else "weight"
            if wname in self._param_index:
                mac_w[self._param_index[wname]] = s
        for pname, s in tr.param_macs.items():
            mac_w[self._param_index[pname]] = s
        dim_w = np.zeros(len(params) * ndim, dtype=np.int64)  # MACs per unit of a dimension (attention products)
        for (pname, d), s in tr.dim_macs.items():
            dim_w[self._param_index[pname] * ndim + d] = s
        # m[i*ndim + d, g]: elements of dim d of parameter i removed per channel removed from group g
        m = np.zeros((len(params) * ndim, len(self.groups)), dtype=np.int64)
        for g, (group, items) in enumerate(zip(self.groups, tr.items, strict=True)):
            for it in items:
                per_root = len(it.idxs) // group.channels
                for pname, d in self.param_dims(it):
                    m[self._param_index[pname] * ndim + d, g] += per_root
        self._base_dims = base.reshape(-1)
        self._m = m
        self._mac_w = mac_w
        self._dim_w = dim_w
        self._byte_w = byte_w
        self.base_cost = self.dense_state(self.channels).cost()
        touched = m.reshape(len(params), ndim, -1).any(axis=1)  # [param, group]
        layer_macs = mac_w * base.prod(axis=1) + (dim_w.reshape(len(params), ndim) * base).sum(axis=1)
        self._group_macs = layer_macs @ touched  # MACs of the layers each group touches

    def dense_state(self, keep: np.ndarray) -> CostState:
        """The cost when group ``i`` keeps ``keep[i]`` channels and every layer is dense: the polynomial."""
        flat = self._base_dims - self._m @ (self.channels - keep)
        numel = flat.reshape(-1, self._ndim).prod(axis=1)
        macs = int(self._mac_w @ numel) + int(self._dim_w @ flat) + self.trace.functional_macs
        return CostState(macs=macs, params=int(numel.sum()), bytes=int(self._byte_w @ numel))

    def cost_resolved(self, keep: np.ndarray, resolved: Mapping[str, Any]) -> Cost:
        """The cost at ``keep`` with each dimension's resolved part (``{key: resolved}``; absent: nothing)."""
        state = self.dense_state(keep)
        removed: tuple[str, ...] = ()
        for dim in dimensions():
            part = _void(resolved.get(dim.key), removed)
            if part is not None:
                dim.add_cost(self, part, keep, state)
                remover = role_of(dim, Removing)
                removed += remover.removed(part) if remover is not None else ()
        cost = state.cost()
        if self.latency_of is not None:  # None where the profile cannot predict it (bits, an untimed method)
            cost = dataclasses.replace(cost, latency=self.latency_of(keep, resolved))
        return cost

    def resolve(self, plan: Plan, keep: np.ndarray) -> dict[str, Any]:
        """Every dimension's part of ``plan``, resolved on ``keep`` (dimensions with nothing to do are absent)."""
        return {dim.key: part for dim, part in self.parts(plan, keep) if part is not None}

    def parts(self, plan: Plan, keep: np.ndarray) -> Iterator[tuple[Dimension, Any | None]]:
        """Each dimension, in order, with its part of ``plan`` resolved on ``keep`` (None: nothing to do).

        After a dimension that removes modules (:class:`~spaces.dimensions.Removing`:
        depth), every later dimension is resolved on the plan without its
        entries on layers inside them: what is gone is neither costed nor built.
        """
        for dim in dimensions():
            part = dim.resolve(self, plan, keep)
            yield dim, part
            remover = role_of(dim, Removing)
            if remover is not None and part is not None:
                plan = voided(plan, remover.removed(part), dim.order)

    def cost_of_keep(self, keep: np.ndarray, ranks: Ranks | None = None) -> Cost:
        """The cost when group ``i`` keeps ``keep[i]`` channels and ``ranks`` are factorized."""
        return self.cost_resolved(keep, {"rank": ranks or None})

    def cost_at(self, plan: Plan, keep: np.ndarray) -> Cost:
        """The cost of ``plan``'s other dimensions, resolved on the kept channels ``keep`` (what ``fit`` moves)."""
        return self.cost_resolved(keep, self.resolve(plan, keep))

    def cost(self, plan: Plan) -> Cost:
        return self.cost_at(plan, self.keep_counts(plan))

    def modules_state(self, modules: Sequence[str], keep: np.ndarray) -> CostState:
        """The dense cost, at ``keep``, of the parameters inside ``modules`` and of the layers they hold.

        The polynomial restricted to those parameters: their MACs (each layer's
        positions times its weight, an attention's products) and their
        parameters and bytes. What a removing dimension takes away; products
        outside modules are not in it (the caller adds what it measured).
        """
        names = tuple(modules)
        rows = np.array([inside(n.rpartition(".")[0], names) for n in self._param_index], dtype=bool)
        flat = self._base_dims - self._m @ (self.channels - keep)
        numel = flat.reshape(-1, self._ndim).prod(axis=1) * rows
        dims = flat * np.repeat(rows, self._ndim)
        macs = int(self._mac_w @ numel) + int(self._dim_w @ dims)
        return CostState(macs=macs, params=int(numel.sum()), bytes=int(self._byte_w @ numel))

    def element_size(self, layer: str) -> int:
        """Bytes per element of ``layer``'s weight."""
        return int(self._byte_w[self._param_index[f"{layer}.weight"]])

    def macs_share(self, gid: str) -> float:
        """Share of the base MACs in layers whose size depends on group ``gid``."""
        g = self.group_index(gid)
        return float(self._group_macs[g] / self.base_cost.macs) if self.base_cost.macs else 0.0

    # ------------------------------------------------------------ groups
    def group_index(self, gid: str) -> int:
        if gid not in self._gid_index:
            raise PlanError(self.unknown_group(gid))
        return self._gid_index[gid]

    def unknown_group(self, gid: str) -> str:
        """The message for an id that is not a group of the space (excluded ones say why)."""
        if gid in self.trace.excluded:
            return f"group {gid!r} is excluded from the space: {self.trace.excluded[gid]}"
        ids = [g.id for g in self.groups]
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        return f"unknown group id {gid!r}; the space has {len(ids)} groups: {shown}"

    def allowed_keeps(self, group: Group, round_to: int | None = None) -> np.ndarray:
        """The channel counts a group may keep under ``round_to`` (ascending)."""
        rt = 1 if group.id in self.trace.heads else round_to or self.round_to  # heads are not kernel channels
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
        """Channels each group keeps under ``plan`` (validates the plan's group ids and ratios)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a spaces.Plan, got {type(plan).__name__}")
        for gid in plan.prune:
            self.group_index(gid)
        rt = plan.round_to or self.round_to
        keep = self.channels.copy()
        for gid, ratio in plan.prune.items():
            i = self._gid_index[gid]
            c = self.groups[i].channels
            k = c - math.floor(ratio * c + 0.5)
            if k < 1:
                largest = (c - 1) / c
                raise PlanError(
                    f"prune ratio {ratio} leaves group {gid!r} ({c} channels) empty; "
                    f"ratios must keep at least one channel (< {largest + 0.5 / c:.4g})"
                )
            if rt > 1 and c > rt and gid not in self.trace.heads:
                k = min(c, max(rt, rt * math.floor(k / rt + 0.5)))
            keep[i] = k
        return keep

    def plan_from_keep(self, keep: Sequence[int] | np.ndarray, *, like: Plan | None = None) -> Plan:
        """The plan that keeps exactly ``keep[i]`` channels of group ``i`` (ranks and options of ``like``)."""
        prune = {}
        for g, k in zip(self.groups, keep, strict=False):
            if k < g.channels:
                prune[g.id] = (g.channels - int(k)) / g.channels
        return Plan(
            prune=prune,
            importance=(like.importance if like and like.importance else self.importance),
            round_to=(like.round_to if like and like.round_to else self.round_to),
            **(_held_entries(like) if like else {}),
        )

    # ------------------------------------------------------------ layers
    def pruned_geom(self, name: str, keep: np.ndarray) -> LayerGeom:
        """Factorizable layer ``name``'s geometry when groups keep ``keep`` channels."""
        i = self._param_index[f"{name}.weight"]
        rows = slice(i * self._ndim, i * self._ndim + 2)
        cout, cin = self._base_dims[rows] - self._m[rows] @ (self.channels - keep)
        return self.trace.geoms[name].with_channels(cout, cin)

    def weight_shape(self, name: str, keep: np.ndarray) -> tuple[int, ...] | None:
        """The shape of layer ``name``'s weight when groups keep ``keep`` channels (``None``: no such weight)."""
        i = self._param_index.get(f"{name}.weight")
        if i is None:
            return None
        ndim = self.trace.model.get_parameter(f"{name}.weight").dim()
        rows = slice(i * self._ndim, i * self._ndim + ndim)
        return tuple(int(d) for d in self._base_dims[rows] - self._m[rows] @ (self.channels - keep))

    def layer(self, name: str) -> LayerGeom:
        """The unpruned geometry of factorizable layer ``name`` (PlanError naming why if it is not one)."""
        if name not in self.trace.geoms:
            self.check_layer(name, "svd", 1)
        return self.trace.geoms[name]

    def check_layer(self, name: str, method: str, spec: int | float) -> None:
        geom = self.trace.geoms.get(name)
        if geom is None:
            if name in self.trace.not_factorizable:
                raise PlanError(f"layer {name!r} cannot be factorized: {self.trace.not_factorizable[name]}")
            example = next(iter(self.trace.geoms), "")
            raise PlanError(f"unknown layer {name!r}; factorizable layers are Conv2d/Linear names like {example!r}")
        if method not in geom.methods:
            raise PlanError(
                f"method {method!r} does not apply to layer {name!r} ({geom.kind} {geom.kh}x{geom.kw}); "
                f"it takes {', '.join(geom.methods)}"
            )
        full = max(geom.full_ranks(method))
        if isinstance(spec, int) and spec > full:
            raise PlanError(f"rank {spec} of layer {name!r} is above its full rank {full} for {method!r}")


def _void(part: Any, removed: tuple[str, ...]) -> Any:
    """A resolved part without its layers inside ``removed`` modules (a part keyed by layer names, or a list of
    them; the allocator's points carry parts that :meth:`CostModel.resolve` did not void)."""
    if not removed or part is None:
        return part
    if isinstance(part, Mapping):
        return {k: v for k, v in part.items() if not inside(str(k), removed)}
    if isinstance(part, (list, tuple)) and all(isinstance(k, str) for k in part):
        return type(part)(k for k in part if not inside(k, removed))
    return part


def _held_entries(plan: Plan) -> dict[str, dict[str, Any]]:
    """``plan``'s entries of every dimension ``fit`` holds (all but the pruning it moves)."""
    return {k: dict(plan.entries(k)) for d in dimensions() if d.fit_rule == "held" for k in d.keys}
