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
  ``Conv1D``) takes no bits yet.

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
from spaces.decoder._layout import DecoderLayout, layout_of

if TYPE_CHECKING:
    from spaces._plan import Plan

__all__ = ["DecoderChoice", "apply_decoder_plan", "decoder_groups", "kept_count", "magnitude", "resolve"]

Scores = Mapping[str, torch.Tensor]  # group id to one importance score per structure (higher: kept first)


@dataclass(frozen=True)
class DecoderChoice:
    """A resolved decoder plan: the kept layers and, per kept layer, the kept MLP channels and key-value groups."""

    layers: tuple[int, ...]
    mlp: Mapping[int, tuple[int, ...]]
    groups: Mapping[int, tuple[int, ...]]
    bits: Mapping[int, int] = field(default_factory=dict)  # kept layer -> weight bits of its projections


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
    return DecoderChoice(kept, mlp, heads, bits)


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


def apply_decoder_plan(model: nn.Module, plan: Plan | DecoderChoice, *, scores: Scores | None = None) -> nn.Module:
    """The compressed model: a copy of ``model`` with the plan's layers, channels and groups removed."""
    choice = plan if isinstance(plan, DecoderChoice) else resolve(model, plan, scores=scores)
    out = copy.deepcopy(model)
    layout = layout_of(out)
    layers = layout.layers(out)
    for i in choice.layers:
        layer = layers[i]
        if len(choice.mlp[i]) < layout.mlp(layer).width:
            layout.narrow_mlp(layer, torch.tensor(choice.mlp[i]))
        a = layout.attention(layer)
        if len(choice.groups[i]) < a.n_kv:
            d, g = a.head_dim, a.per_group
            kv_rows = torch.tensor([k * d + j for k in choice.groups[i] for j in range(d)])
            q_rows = torch.tensor([(k * g + h) * d + j for k in choice.groups[i] for h in range(g) for j in range(d)])
            layout.narrow_attention(layer, q_rows, kv_rows)
    for i, b in choice.bits.items():
        for projection in layout.projections(layers[i]):
            quantize_layer(projection, b)
    if len(choice.layers) < len(layers):
        layout.keep_layers(out, choice.layers)
    fields = layout.config_fields(out)
    for key, value in (fields or {}).items():  # the config says what the model now is, where it can
        setattr(out.config, key, value)
    return out
