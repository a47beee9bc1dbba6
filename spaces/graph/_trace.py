"""Tracing: a model's channel groups and factorizable layers (mechanism only).

:func:`trace` deep-copies nothing and changes nothing: it runs one forward pass
with hooks on the model it is given (the space's private copy) and traces it
with torch-pruning's ``DependencyGraph`` (with :mod:`spaces.graph._tp_compat`
installed). It returns a :class:`Trace`:

* **groups** (:class:`Group`): channels that must be pruned together, each with
  its members (:class:`Item`: a module or parameter, the torch-pruning function
  that prunes it, and the member indices that go with each root channel, all
  relative to the *original* shapes). Groups are in module order; their id is
  the name of their first output-pruned layer.
* **spatial**: per conv/linear layer, the positions it is applied at (the MAC
  multiplier of its weight), and **geoms**: the factorizable layers' shapes.
* **heads**: every head-prunable attention called once as self-attention
  (:func:`spaces.graph._attention.head_kind`: torch's ``nn.MultiheadAttention``,
  switched to :class:`spaces.graph._attention.HeadPrunableAttention` and listed in
  ``attentions``, and timm-style ones) gets a head group of its own
  (:func:`_add_attention`); its projection and attention-product MACs are
  terms of the polynomial (``param_macs``, ``dim_macs``), and the products the
  forward pass makes elsewhere are one constant, ``functional_macs``. A linear
  layer whose weight is also applied with ``F.linear`` outside its forward is
  costed where it is applied and is not factorizable.
* **excluded**: groups torch-pruning gets wrong by construction (they touch a
  grouped, non-depthwise convolution, or their index mapping is not uniform),
  with the reason; the classifier's output layer (found by walking back from
  the outputs) and the caller's ignored layers are never pruned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from spaces._errors import UnsupportedModelError, first_line
from spaces._lowrank import LayerGeom
from spaces.graph._attention import (
    HeadPrunableAttention,
    convert,
    counting_products,
    drop_heads,
    head_kind,
    ineligible,
    prune_heads,
    revert,
)

__all__ = ["CONV", "LINEAR", "Group", "Item", "Trace", "describe", "resolve_ignored", "trace"]

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR = (nn.Linear,)


@dataclass(frozen=True)
class Group:
    """A set of channels that must be pruned together.

    ``id`` is the name of the group's root layer (the first layer, in module
    order, whose output channels the group removes); ``layers`` lists every
    member (layers whose outputs, inputs or normalisation statistics shrink);
    ``channels`` is the number of channels of the group; ``outputs`` names the
    conv/linear layers whose output channels it removes.
    """

    id: str
    layers: tuple[str, ...]
    channels: int
    outputs: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class Item:
    """One member of a group: what torch-pruning prunes, and which indices go with which root channel."""

    target: str  # module name or parameter name
    is_param: bool
    handler: Any  # torch-pruning pruning function (bound method)
    is_out: bool
    idxs: np.ndarray  # member indices, aligned with root_idxs
    root_idxs: np.ndarray


@dataclass
class Trace:
    """What :func:`trace` found (see the module docs); groups and items are aligned lists."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    order: dict[str, int]  # module name -> position in module order
    spatial: dict[str, int]
    geoms: dict[str, LayerGeom]
    not_factorizable: dict[str, str]
    base_output: torch.Tensor
    ignored_layers: tuple[str, ...]
    attentions: tuple[str, ...] = ()  # switched to HeadPrunableAttention (see spaces.graph._attention)
    heads: tuple[str, ...] = ()  # every head-prunable attention (torch's, switched, and timm-style)
    param_macs: dict[str, int] = field(default_factory=dict)  # parameter -> MACs per element
    dim_macs: dict[tuple[str, int], int] = field(default_factory=dict)  # (parameter, dim) -> MACs per unit of size
    functional_macs: int = 0  # products between activations outside head-prunable attentions
    functional_layers: tuple[str, ...] = ()  # linear layers whose weight is applied outside their forward
    groups: list[Group] = field(default_factory=list)
    items: list[list[Item]] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    def drop(self, bad: dict[str, str]) -> None:
        """Exclude the groups named in ``bad`` (id -> reason)."""
        keep = [i for i, g in enumerate(self.groups) if g.id not in bad]
        self.excluded.update(bad)
        self.groups = [self.groups[i] for i in keep]
        self.items = [self.items[i] for i in keep]


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an exception raised inside a library."""
    return f"{type(exc).__name__}: {first_line(exc, '')}"


def _is_grouped_conv(m: nn.Module) -> bool:
    return isinstance(m, CONV) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def trace(model: nn.Module, example_inputs: tuple[Any, ...], ignored: set[str]) -> Trace:
    """Trace ``model`` (in eval mode, not modified) on ``example_inputs``; ``ignored`` names are never pruned."""
    import torch_pruning as tp

    from spaces.graph import _tp_compat

    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    heads, rec = _attentions(model, names, example_inputs)
    attentions = [n for n, kind in heads.items() if kind == "torch"]
    _tp_compat.install()  # before torch-pruning builds its first graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        revert(model, attentions)  # torch-pruning traces torch's own attention (it cannot map our head split)
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as exc:  # the library's tracing failed on this model
            raise UnsupportedModelError(f"torch-pruning cannot trace the model: {describe(exc)}") from exc
        finally:
            convert(model, attentions)
        ignored = ignored | _classifier_layers(dg, names)
        raw_groups = _tp_compat.all_groups(dg, [model.get_submodule(n) for n in sorted(ignored)], CONV + LINEAR)
    ignored_layers = tuple(sorted(ignored, key=lambda n: order.get(n, 0)))
    out = Trace(model, example_inputs, order, rec.spatial, rec.geoms, rec.not_factorizable, rec.output, ignored_layers)
    out.attentions, out.heads = tuple(attentions), tuple(heads)
    out.functional_macs, out.functional_layers = rec.functional_macs, rec.functional_layers
    for root, g in raw_groups:
        if isinstance(g, Exception):
            out.excluded[names[root]] = f"torch-pruning cannot map its channels: {describe(g)}"
        else:
            _add_group(out, dg, names, g)
    for name, kind in heads.items():
        _add_attention(out, name, kind, rec.attention_calls[name][0], ignored)
    position = sorted(range(len(out.groups)), key=lambda i: order.get(out.groups[i].id, 1 << 30))
    out.groups = [out.groups[i] for i in position]  # in module order, so tables read top-down
    out.items = [out.items[i] for i in position]
    return out


@dataclass
class _Record:
    """What one forward pass showed (see :func:`_record_spatial`)."""

    spatial: dict[str, int]
    geoms: dict[str, LayerGeom]
    not_factorizable: dict[str, str]
    output: torch.Tensor
    functional_macs: int
    attention_calls: dict[str, list[tuple[int, int, int]]]  # attention -> (sequences, queries, keys) per call
    functional_layers: tuple[str, ...]  # linear layers whose weight is applied outside their forward


def _attentions(
    model: nn.Module, names: dict[nn.Module, str], example_inputs: tuple[Any, ...]
) -> tuple[dict[str, str], _Record]:
    """The head-prunable attentions (name -> kind) called once as self-attention, and the forward pass's record.

    torch's attentions are switched first (their cost terms need the switched
    forward); one called otherwise is switched back and the pass made again.
    """
    for m, n in names.items():
        why = ineligible(m) if isinstance(m, HeadPrunableAttention) else None
        if why:
            raise UnsupportedModelError(f"attention {n!r}: {why}; build the space from the unpruned model")
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)  # their fast path bypasses the attention
    kinds = {
        n: k
        for m, n in names.items()
        if (k := head_kind(m)) is not None and not (n and isinstance(model.get_submodule(n.rpartition(".")[0]), fused))
    }
    convert(model, [n for n, k in kinds.items() if k == "torch"])
    rec = _record_spatial(model, names, example_inputs, kinds)
    once = {n: k for n, k in kinds.items() if [c[1] == c[2] for c in rec.attention_calls.get(n, [])] == [True]}
    if once != kinds:  # called more than once, never, or with other keys: left as it is, counted as a product
        revert(model, [n for n in kinds if n not in once])
        rec = _record_spatial(model, names, example_inputs, once)
    return once, rec


def _record_spatial(
    model: nn.Module, names: dict[nn.Module, str], example_inputs: tuple[Any, ...], heads: dict[str, str]
) -> _Record:
    """One forward pass: each conv/linear layer's positions, each attention's calls, the other products' MACs."""
    spatial: dict[str, int] = {}
    shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    calls: dict[str, list[tuple[int, int, int]]] = {}

    def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        name = names[mod]
        x = inputs[0]
        if isinstance(mod, LINEAR):
            s = x.numel() // mod.in_features
        elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            s = x.shape[0] * math.prod(x.shape[2:])
        else:
            s = output.shape[0] * math.prod(output.shape[2:])
        spatial[name] = spatial.get(name, 0) + int(s)
        shapes.setdefault(name, []).append((tuple(x.shape), tuple(output.shape)))

    def attention_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        calls.setdefault(names[mod], []).append(_attention_call(mod, args, kwargs))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV + LINEAR)]
    hooks += [model.get_submodule(n).register_forward_hook(attention_hook, with_kwargs=True) for n in heads]
    try:  # a weight applied outside its layer is costed where it is applied (into spatial, in call order)
        base_output, products = _forward(model, example_inputs, heads, spatial)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(base_output, torch.Tensor):
        raise UnsupportedModelError(f"the model must return one tensor, got {type(base_output).__name__}")
    geoms, not_factorizable = _factorizable(model, spatial, shapes)
    for name in products.functional:  # ... but never replaced: the code that reads the weight would not see it
        geoms.pop(name, None)
        not_factorizable[name] = "its weight is applied outside its forward (F.linear(x, layer.weight))"
    for name in (n for n, kind in heads.items() if kind == "torch"):
        not_factorizable[f"{name}.in_proj"] = "an attention's fused q/k/v projection is not factorizable"
    return _Record(spatial, geoms, not_factorizable, base_output, products.macs, calls, tuple(products.functional))


def _attention_call(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """(sequences, queries, keys) of one call of a head-prunable attention; keys -1: not a self-attention."""
    if not isinstance(mod, nn.MultiheadAttention):  # timm-style: x of shape (N, L, C)
        x = args[0] if args else kwargs["x"]
        return (int(x.shape[0]), int(x.shape[1]), int(x.shape[1])) if x.dim() == 3 else (0, 0, -1)
    q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args) :]])[:3]
    n, length = (1, q.shape[0]) if q.dim() == 2 else (q.shape[0], q.shape[1])
    if q.dim() == 3 and not mod.batch_first:
        n, length = length, n
    return int(n), int(length), int(length) if q.shape == k.shape == v.shape else -1


def _forward(
    model: nn.Module, example_inputs: tuple[Any, ...], heads: Iterable[str], spatial: dict[str, int]
) -> tuple[Any, Any]:
    """The model's output on ``example_inputs`` and what it computed outside modules (see ``counting_products``)."""
    try:
        with torch.no_grad(), counting_products(model, heads, spatial) as products:
            return model(*example_inputs), products
    except UnsupportedModelError:
        raise
    except Exception as exc:
        shapes_txt = ", ".join(str(tuple(x.shape)) for x in example_inputs if isinstance(x, torch.Tensor))
        raise ValueError(f"example_inputs of shape {shapes_txt} do not fit the model: {describe(exc)}") from None


def _factorizable(
    model: nn.Module, spatial: dict[str, int], shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]
) -> tuple[dict[str, LayerGeom], dict[str, str]]:
    """The geometry of each factorizable layer seen in the forward pass, and why each other one is not."""
    geoms: dict[str, LayerGeom] = {}
    not_factorizable: dict[str, str] = {}
    for name, calls in shapes.items():
        mod = model.get_submodule(name)
        reason = None
        if len(calls) != 1:
            reason = f"called {len(calls)} times per forward pass"
        elif isinstance(mod, nn.Linear):
            rows = spatial[name]
            geoms[name] = LayerGeom(name, "linear", mod.out_features, mod.in_features, 1, 1, rows, rows, rows)
            continue
        elif not isinstance(mod, nn.Conv2d) or type(mod) is not nn.Conv2d:
            reason = f"{type(mod).__name__} is not factorizable (Conv2d and Linear are)"
        elif mod.groups != 1:
            kind = "depthwise" if mod.groups == mod.in_channels else "grouped"
            reason = f"{kind} convolution (groups={mod.groups}) is not factorizable"
        elif mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            reason = "only zero padding given as numbers is supported"
        if reason is not None or not isinstance(mod, nn.Conv2d):
            not_factorizable[name] = reason or "not a Conv2d"
            continue
        (xs, ys) = calls[0]
        n = xs[0]
        geoms[name] = LayerGeom(
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
    return geoms, not_factorizable


def resolve_ignored(model: nn.Module, layers: Iterable[str | nn.Module]) -> set[str]:
    """Names of the layers the caller never wants pruned (given as names or modules of ``model``)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = {m: n for n, m in model.named_modules()}
    known = set(names.values())
    out: set[str] = set()
    for layer in layers:
        name = names.get(layer) if isinstance(layer, nn.Module) else layer
        if not isinstance(name, str) or name not in known:
            raise ValueError(f"ignored layer {layer!r} is not a submodule of the model")
        out.add(name)
    return out


def _classifier_layers(dg: Any, names: dict[nn.Module, str]) -> set[str]:
    """Conv/linear layers whose outputs reach a model output through no other such layer."""
    import torch_pruning as tp

    found: set[str] = set()
    stack = [n for n in dg.module2node.values() if not n.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, CONV + LINEAR):
            found.add(names[node.module])
            continue
        if node.type == tp.ops.OPTYPE.PARAMETER:
            continue
        stack.extend(node.inputs)
    return found


def _add_group(out: Trace, dg: Any, names: dict[nn.Module, str], g: Any) -> None:
    items: list[Item] = []
    reason = None
    for k, (dep, idxs) in enumerate(g):
        target = dep.target.module
        is_param = isinstance(target, nn.Parameter)
        if is_param:
            name = dg._param_to_name[target]  # torch-pruning keeps this map private
        elif target not in names:
            continue  # torch-pruning's pseudo-module for a parameter-free op (add, cat, relu, ...)
        else:
            name = names[target]
            if _is_grouped_conv(target):
                reason = f"touches grouped convolution {name!r} (groups={target.groups}), not pruned"
        items.append(
            Item(
                target=name,
                is_param=is_param,
                handler=dep.handler,
                is_out=bool(dg.is_out_channel_pruning_fn(dep.handler)),
                idxs=np.asarray(idxs, dtype=np.int64),
                root_idxs=np.asarray(g[k].root_idxs, dtype=np.int64),
            )
        )
    by_order = lambda n: out.order.get(n, 1 << 30)  # noqa: E731
    producers = sorted((it.target for it in items if it.is_out and not it.is_param), key=by_order)
    gid = producers[0] if producers else items[0].target
    channels = len(items[0].idxs)
    for it in items:
        counts = np.bincount(it.root_idxs, minlength=channels)
        if reason is None and len(counts) == channels and counts.min() != counts.max():
            reason = f"index mapping into {it.target!r} is not uniform"
        if reason is None and it.handler is None:
            reason = f"no pruning function for {it.target!r}"
    if reason is not None:
        out.excluded[gid] = reason
        return
    layers = tuple(dict.fromkeys(sorted((it.target for it in items), key=by_order)))
    outputs = tuple(n for n in producers if n in out.spatial)
    out.groups.append(Group(id=gid, layers=layers, channels=channels, outputs=outputs))
    out.items.append(items)


def _add_attention(out: Trace, name: str, kind: str, call: tuple[int, int, int], ignored: set[str]) -> None:
    """Cost terms of head-prunable attention ``name`` (one self-attention ``call``) and its head group."""
    import torch_pruning as tp

    mod = out.model.get_submodule(name)
    n, length, _ = call
    torch_kind = kind == "torch"
    inner, outer = (f"{name}.in_proj_weight", f"{name}.out_proj") if torch_kind else (f"{name}.qkv", f"{name}.proj")
    if torch_kind:
        out.param_macs[inner] = n * length  # q, k and v of every token
    out.dim_macs[(f"{outer}.weight", 1)] = 2 * n * length * length  # Q @ K^T and A @ V, per unit of H*d
    out.excluded.pop(inner, None)  # torch-pruning's own try at the q/k/v outputs: the head group replaces it
    keep = [i for i, g in enumerate(out.groups) if g.id != inner]
    out.groups, out.items = [out.groups[i] for i in keep], [out.items[i] for i in keep]
    heads, d = int(cast(int, mod.num_heads)), int(cast(int, mod.head_dim))
    if heads < 2 or ignored & {name, inner, outer}:
        return
    rows = np.arange(3 * heads * d, dtype=np.int64)
    cols = np.arange(heads * d, dtype=np.int64)
    of_row, of_col = (rows % (heads * d)) // d, cols // d
    items = [
        Item(name, False, prune_heads, True, rows, of_row)
        if torch_kind
        else Item(inner, False, tp.prune_linear_out_channels, True, rows, of_row),
        Item(outer, False, tp.prune_linear_in_channels, False, cols, of_col),
    ]
    if not torch_kind:
        every = np.arange(heads, dtype=np.int64)
        items.append(Item(name, False, drop_heads, False, every, every))
    out.groups.append(Group(id=name, layers=(name, outer) if torch_kind else (inner, outer), channels=heads))
    out.items.append(items)
