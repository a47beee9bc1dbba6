"""A plan on a decoder-only language model: which channels, key-value groups and layers it keeps, and the model.

A decoder plan is an ordinary :class:`~spaces.Plan` over the structures of the
model's layout (:mod:`spaces.decoder._layout`), named after the layer list
(``model.layers`` in the Llama family):

* ``prune = {"model.layers.3.mlp": 0.5}`` removes half of layer 3's MLP
  intermediate channels (gate, up and down together);
* ``prune = {"model.layers.3.attn": 0.5}`` removes half of its key-value groups,
  each with the query heads that read it;
* ``depth = {"model.layers.5": "shortcut"}`` drops layer 5: the residual stream
  passes it unchanged, which is what a decoder layer computes when its
  attention's and MLP's outputs are zero;
* ``bits = {"model.layers.2": 4}`` (or 8) quantizes every projection of layer 2
  (attention and MLP; the layout's :meth:`~DecoderLayout.projections`) the way
  the vision models' bits dimension does: weights symmetric per output channel,
  simulated in torch (:func:`spaces.quantize_layer`), costing
  :func:`spaces.quantized_bytes`. The embeddings, norms and output head stay
  float. A layout whose projections are not plain ``Linear`` layers (GPT-2's
  ``Conv1D``) takes no bits yet;
* ``rank = {"model.layers.3.mlp": 0.25}`` factorizes each projection of layer 3's
  MLP (``"...attn"``: its query, key, value and output projections) into two
  ``Linear`` layers at a quarter of its full rank, on its pruned shape, by the
  group's ``method`` (``{"model.layers.3.mlp": "whitened"}``: activation-aware
  SVD, :mod:`spaces.factorization._whitened`, which reads the Gram matrices of
  the projections' inputs, :meth:`~spaces.decoder.DecoderSpace.calibrate_inputs`;
  ``"svd"`` by default). The break-even rule of the vision models holds
  (:meth:`spaces.LayerGeom.factor_ranks`): a projection whose rank would not save
  parameters stays dense, so ``1.0`` never changes the model. A projection
  pruned and factorized is pruned first; with ``bits`` too, both factors are
  quantized. The Gram matrix of a pruned projection's input is the dense model's,
  restricted to the inputs it keeps.

A ratio ``r`` of ``n`` structures removes ``r * n`` of them rounded half up, and
keeps at least one. Which ones go is decided by an importance score per structure, the
L2 norm of its weights by default (the magnitude criterion of LLM-Pruner's
"element" setting; a caller may pass its own scores, e.g. activation-aware
ones). :func:`resolve` validates the plan against the model and picks the kept
indices; :func:`apply_decoder_plan` builds the compressed model on a copy, the
original untouched. A plan that removes nothing gives the same module objects'
weights and so bit-identical logits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from spaces._errors import PlanError
from spaces._quant import is_quantizable, quantize_layer
from spaces.decoder._layout import AttentionView, DecoderLayout, MlpView, layout_of

if TYPE_CHECKING:
    from spaces._plan import Plan

__all__ = [
    "DecoderChoice",
    "apply_decoder_plan",
    "decoder_groups",
    "kept_count",
    "magnitude",
    "projection_shapes",
    "resolve",
]

Scores = Mapping[str, torch.Tensor]  # group id to one importance score per structure (higher: kept first)


@dataclass(frozen=True)
class DecoderChoice:
    """A resolved decoder plan: the kept layers and, per kept layer, the kept MLP channels and key-value groups."""

    layers: tuple[int, ...]
    mlp: Mapping[int, tuple[int, ...]]
    groups: Mapping[int, tuple[int, ...]]
    bits: Mapping[int, int] = field(default_factory=dict)  # kept layer -> weight bits of its projections
    # kept layer -> projection name inside it (``mlp.down_proj``) -> (method, rank) of those factorized
    ranks: Mapping[int, Mapping[str, tuple[str, int]]] = field(default_factory=dict)


def decoder_groups(model: nn.Module, layout: DecoderLayout | None = None) -> dict[str, int]:
    """Every prunable group of ``model`` with its number of structures (channels or key-value groups)."""
    layout = layout or layout_of(model)
    path = layout.layers_path(model)
    out: dict[str, int] = {}
    for i, layer in enumerate(layout.layers(model)):
        out[f"{path}.{i}.attn"] = layout.attention(layer).n_kv
        out[f"{path}.{i}.mlp"] = layout.mlp(layer).width
    return out


def kept_count(n: int, ratio: float) -> int:
    """How many of ``n`` structures a prune ratio keeps: ``n - round(ratio * n)``, at least one."""
    return max(1, n - math.floor(ratio * n + 0.5))


def resolve(model: nn.Module, plan: Plan, *, scores: Scores | None = None, counts_only: bool = False) -> DecoderChoice:
    """Check ``plan`` against ``model`` (one-line :class:`~spaces.PlanError`) and choose what it keeps.

    With ``counts_only`` the kept structures are the first ones, not the most
    important: what costs need (they depend on the counts alone), without scoring.
    """
    layout = layout_of(model)
    path, layers = layout.layers_path(model), layout.layers(model)
    groups = decoder_groups(model, layout)
    for gid in plan.entries("prune"):
        if gid not in groups:
            raise PlanError(f"prune group {gid!r} is not in this model; its groups are {path}.<i>.mlp and .attn")
    blocks = {f"{path}.{i}": i for i in range(len(layers))}
    for name in plan.entries("depth"):
        if name not in blocks:
            raise PlanError(
                f"depth block {name!r} is not a decoder layer; they are {path}.0 to {path}.{len(layers) - 1}"
            )
    kept = tuple(i for name, i in blocks.items() if name not in plan.entries("depth"))
    if not kept:
        raise PlanError(f"the plan drops all {len(layers)} decoder layers; at least one must stay")
    bits = _bits(layout, layers, plan, blocks, kept)
    mlp: dict[int, tuple[int, ...]] = {}
    heads: dict[int, tuple[int, ...]] = {}
    for i in kept:
        for kind, n, out in (
            ("mlp", layout.mlp(layers[i]).width, mlp),
            ("attn", layout.attention(layers[i]).n_kv, heads),
        ):
            gid = f"{path}.{i}.{kind}"
            k = kept_count(n, float(plan.entries("prune").get(gid, 0.0)))
            if counts_only:
                out[i] = tuple(range(k))
                continue
            score = scores[gid] if scores and gid in scores else magnitude(layout, layers[i], kind)
            out[i] = tuple(sorted(torch.topk(score, k).indices.tolist()))
    ranks = _ranks(layout, layers, plan, blocks, DecoderChoice(kept, mlp, heads))
    return DecoderChoice(kept, mlp, heads, bits, ranks)


def projection_shapes(a: AttentionView, m: MlpView, channels: int, groups: int) -> list[tuple[int, int, int]]:
    """Every projection's ``(in, out, bias parameters)`` at ``channels`` MLP channels and ``groups`` key-value
    groups kept: query, key, value, output, then the MLP's gate (if any), up and down."""
    q_out, kv_out = groups * a.per_group * a.head_dim, groups * a.head_dim
    hidden, qkv = a.hidden, int(a.qkv_bias)
    shapes = [(hidden, q_out, qkv * q_out), (hidden, kv_out, qkv * kv_out), (hidden, kv_out, qkv * kv_out)]
    shapes.append((q_out, a.o.shape[0], 0 if a.o_bias is None else a.o_bias.numel()))
    ups = 2 if m.gate is not None else 1
    shapes += [(m.up.shape[1], channels, int(m.up_bias) * channels)] * ups
    shapes.append((channels, m.down.shape[0], 0 if m.down_bias is None else m.down_bias.numel()))
    return shapes


def _ranks(
    layout: DecoderLayout, layers: nn.ModuleList, plan: Plan, blocks: dict[str, int], choice: DecoderChoice
) -> dict[int, dict[str, tuple[str, int]]]:
    """The plan's factorized projections per kept layer: ``{name: (method, rank)}`` on the pruned shapes, those at
    or above break-even left out (they stay dense)."""
    from spaces._lowrank import LayerGeom

    out: dict[int, dict[str, tuple[str, int]]] = {}
    for gid, spec in plan.entries("rank").items():
        head, _, kind = gid.rpartition(".")
        i = blocks.get(head)
        if i is None or kind not in ("attn", "mlp"):
            raise PlanError(f"rank on {gid!r}: ranks name a layer's groups ({next(iter(blocks))}.mlp or .attn)")
        if i not in choice.layers:
            raise PlanError(f"rank on {gid!r}: layer {head} is dropped")
        names = layout.projection_names(kind)
        if not names:
            raise PlanError(f"rank on {gid!r}: the {layout.name} layout's projections cannot be factorized yet")
        a, m = layout.attention(layers[i]), layout.mlp(layers[i])
        shapes = projection_shapes(a, m, len(choice.mlp[i]), len(choice.groups[i]))
        mine = shapes[:4] if kind == "attn" else shapes[4:]
        method = str(plan.entries("method").get(gid, "svd"))
        for name, (cin, cout, _) in zip(names, mine, strict=True):
            ranks = LayerGeom(f"{head}.{name}", "linear", cout, cin).factor_ranks(method, spec)
            if ranks is not None:
                out.setdefault(i, {})[name] = (method, ranks[0])
    return out


def _bits(layout: DecoderLayout, layers: nn.ModuleList, plan: Plan, blocks: dict[str, int], kept: tuple) -> dict:
    """The plan's per-layer bits (4 or 8, as :class:`~spaces.Plan` checks), each on a kept decoder layer of a
    layout whose projections take them."""
    out = {}
    for name, value in plan.entries("bits").items():
        i = blocks.get(name)
        if i is None or i not in kept:
            why = "a dropped layer" if i is not None else "not a decoder layer"
            raise PlanError(f"bits on {name!r}: {why}; bits name kept decoder layers ({next(iter(blocks))} ...)")
        projections = layout.projections(layers[i])
        if not projections or not all(is_quantizable(p) for p in projections):
            raise PlanError(f"bits on {name!r}: the {layout.name} layout's projections cannot be quantized yet")
        out[i] = int(value)
    return out


def magnitude(layout: DecoderLayout, layer: nn.Module, kind: str) -> torch.Tensor:
    """The L2 norm of each structure's weights (every row and column that leaves with it)."""
    with torch.no_grad():
        if kind == "mlp":
            m = layout.mlp(layer)
            sq = m.up.pow(2).sum(1) + m.down.pow(2).sum(0)
            if m.gate is not None:
                sq = sq + m.gate.pow(2).sum(1)
            return sq.sqrt()
        a = layout.attention(layer)
        q = a.q.pow(2).sum(1).view(a.n_kv, -1).sum(1) + a.o.pow(2).sum(0).view(a.n_kv, -1).sum(1)
        kv = (a.k.pow(2).sum(1) + a.v.pow(2).sum(1)).view(a.n_kv, -1).sum(1)
        return (q + kv).sqrt()


def apply_decoder_plan(
    model: nn.Module,
    plan: Plan | DecoderChoice,
    *,
    scores: Scores | None = None,
    grams: Mapping[str, torch.Tensor] | None = None,
    shapes_only: bool = False,
) -> nn.Module:
    """The compressed model: a copy of ``model`` with the plan's layers, channels and groups removed, its
    projections factorized and quantized.

    ``grams``: the dense model's Gram matrix of each projection's input, by its full name
    (:meth:`~spaces.decoder.DecoderSpace.calibrate_inputs`), which the ``whitened`` method reads.
    ``shapes_only``: factor chains of the right shapes without computing them, for weights that are loaded
    next (:func:`search.operations.load_decoder`).
    """
    choice = plan if isinstance(plan, DecoderChoice) else resolve(model, plan, scores=scores)
    out = copy.deepcopy(model)
    layout = layout_of(out)
    layers, path = layout.layers(out), layout.layers_path(out)
    for i in choice.layers:
        layer = layers[i]
        inputs: dict[str, torch.Tensor] = {}  # a narrowed projection's kept inputs, which its Gram matrix keeps
        down, out_proj = (layout.projection_names(k)[-1:] or ("",) for k in ("mlp", "attn"))
        if len(choice.mlp[i]) < layout.mlp(layer).width:
            inputs[down[0]] = torch.tensor(choice.mlp[i])
            layout.narrow_mlp(layer, inputs[down[0]])
        a = layout.attention(layer)
        if len(choice.groups[i]) < a.n_kv:
            d, g = a.head_dim, a.per_group
            kv_rows = torch.tensor([k * d + j for k in choice.groups[i] for j in range(d)])
            q_rows = torch.tensor([(k * g + h) * d + j for k in choice.groups[i] for h in range(g) for j in range(d)])
            layout.narrow_attention(layer, q_rows, kv_rows)
            inputs[out_proj[0]] = q_rows
        for name, (method, rank) in choice.ranks.get(i, {}).items():
            gram = None if grams is None else grams.get(f"{path}.{i}.{name}")
            if gram is not None and name in inputs:
                gram = gram[inputs[name]][:, inputs[name]]
            _factorize(layer, name, method, rank, gram, shapes_only)
    for i, b in choice.bits.items():
        for projection in layout.projections(layers[i]):
            for linear in projection if isinstance(projection, nn.Sequential) else (projection,):
                quantize_layer(linear, b)
    if len(choice.layers) < len(layers):
        layout.keep_layers(out, choice.layers)
    fields = None if any(choice.ranks.values()) else layout.config_fields(out)  # no config says factor chains
    for key, value in (fields or {}).items():  # the config says what the model now is, where it can
        setattr(out.config, key, value)
    return out


def _factorize(layer: nn.Module, name: str, method: str, rank: int, gram: torch.Tensor | None, shapes: bool) -> None:
    """Replace projection ``name`` of ``layer`` by its factor chain at ``rank`` (``shapes``: uncomputed factors)."""
    from spaces._lowrank import LayerGeom
    from spaces.factorization import factor_method

    parent_name, _, attr = name.rpartition(".")
    parent = layer.get_submodule(parent_name)
    dense = getattr(parent, attr)
    geom = LayerGeom(name, "linear", dense.out_features, dense.in_features)
    if shapes:
        first = nn.Linear(geom.cin, rank, bias=False)
        second = nn.Linear(rank, geom.cout, bias=dense.bias is not None)
        chain = nn.Sequential(first, second).to(device=dense.weight.device, dtype=dense.weight.dtype)
    else:
        chain = factor_method(method).factorize_with(dense, geom, (rank,), gram)
    setattr(parent, attr, chain)
