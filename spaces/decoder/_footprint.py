"""The exact cost of a decoder plan, without building the model: parameters, bytes, KV cache and MACs per token.

Everything is counted from the dense model's shapes and the plan's kept counts
(:class:`~spaces.decoder.DecoderChoice`):

* **parameters**: every parameter of the model, counted once (a tied output
  head shares the embedding's), less what the plan removes: rows and columns
  of the narrowed projections and every parameter of a dropped layer;
* **factorized projections** (``plan.rank``): an ``in x out`` weight becomes
  ``in x r`` and ``r x out``, ``r * (in + out)`` parameters and MACs per token;
* **weight bytes**: the parameters at the model's element size (``bytes``
  budgets count these), but a quantized layer's projection weights
  (``plan.bits``), which cost :func:`spaces.quantized_bytes` at their width
  (``ceil(numel * bits / 8)`` plus a float32 scale and a one-byte zero point per
  output channel: what :func:`spaces.parameter_bytes` reads from the built model);
* **KV-cache bytes** at ``context`` tokens and ``batch`` sequences: a key and a
  value vector of ``head_dim`` per kept key-value head, per kept layer, per
  token, at the model's element size: ``2 * batch * context * sum(n_kv * head_dim)
  * element size`` (``memory`` budgets count weights plus these); a layer with a
  sliding window ``w`` (Mistral, Qwen2's upper layers) caches ``min(context, w - 1)``
  tokens, as ``transformers``' sliding cache does;
* **MACs** of one forward pass of ``tokens`` new tokens with ``past`` tokens
  already cached, batch 1: every projection and the MLP at ``tokens * in * out``,
  the two attention products at ``tokens * (past + tokens) * head_dim`` per
  query head each (the kernels compute the whole rectangle, causal mask or
  not), and the output head for the last position only (``logits_to_keep=1``,
  what generation computes). **Prefill** is ``tokens = context, past = 0``;
  **decode** is one token after ``context - 1`` cached, attending to
  ``min(context, w)`` tokens in a layer with a sliding window ``w``.

An **encoder** (a layout that is not ``causal``, BERT's) has no KV cache and
does not decode: its ``kv_bytes`` and ``decode_macs`` are 0, and its one pass
over ``context`` tokens (``prefill_macs``) ends in its own head (the pooler on
the first token and the classifier, :meth:`~spaces.decoder.DecoderLayout.head_macs`).

Norms, rotary embeddings, the activation and the softmax are elementwise, not
MACs. The test compares every figure with the built model: its parameters, its
cache tensors after a forward pass, and ``torch.utils.flop_counter`` on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from spaces.cost._cost import quantized_bytes
from spaces.decoder._choice import DecoderChoice, projection_shapes, resolve
from spaces.decoder._layout import AttentionView, DecoderLayout, MlpView, layout_of

if TYPE_CHECKING:
    from spaces._plan import Plan

__all__ = ["DecoderCost", "decoder_cost"]


@dataclass(frozen=True)
class DecoderCost:
    """What a decoder plan costs (see the module docs); ``memory_bytes`` is weights plus KV cache."""

    params: int
    weight_bytes: int
    kv_bytes: int
    prefill_macs: int
    decode_macs: int
    context: int
    batch: int
    layers: int = 0  # decoder layers kept
    prefill_attention_macs: int = 0  # of prefill_macs, the two attention products'
    decode_attention_macs: int = 0  # of decode_macs, the two attention products'

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def prefill_macs_per_token(self) -> float:
        return self.prefill_macs / self.context


def decoder_cost(model: nn.Module, plan: Plan | DecoderChoice, *, context: int, batch: int = 1) -> DecoderCost:
    """The cost of ``plan`` on ``model`` at ``context`` tokens and ``batch`` sequences (see the module docs)."""
    if context < 1 or batch < 1:
        raise ValueError(f"context and batch must be at least 1, got context={context}, batch={batch}")
    choice = plan if isinstance(plan, DecoderChoice) else resolve(model, plan, counts_only=True)
    layout = layout_of(model)
    layers = layout.layers(model)
    element = next(model.parameters()).element_size()
    params = sum(p.numel() for p in model.parameters())  # counted once each, tied or not
    saved = 0  # bytes the quantized projections save against the element size
    kv = 0  # cached values per sequence: sum over kept layers of 2 * tokens kept * n_kv * head_dim
    per_token = 0  # MACs of the projections and MLPs per token
    products = 0  # attention-product MACs of prefill (every query token against every token)
    decode = 0  # attention-product MACs of one decoded token against what it attends to
    for i, layer in enumerate(layers):
        a, m = layout.attention(layer), layout.mlp(layer)
        if i not in choice.layers:
            params -= sum(p.numel() for p in layer.parameters())
            continue
        kept_params, macs, width, shapes = _layer(a, m, len(choice.mlp[i]), len(choice.groups[i]))
        weights = _weights(layout, shapes, choice.ranks.get(i, {}))
        kept_params -= sum(n * o for n, o, _ in shapes) - sum(w for w, _ in weights)
        macs -= sum(n * o for n, o, _ in shapes) - sum(w for w, _ in weights)
        params -= _layer(a, m, m.width, a.n_kv)[0] - kept_params
        if i in choice.bits:
            saved += sum(w * element - quantized_bytes(w, o, choice.bits[i]) for w, o in weights)
        per_token += macs
        window = layout.window(model, i)  # a sliding window caches its last window - 1 tokens
        products += 2 * context * context * width
        decode += 2 * (context if window is None else min(context, window)) * width
        kv += 2 * (context if window is None else min(context, window - 1)) * len(choice.groups[i]) * a.head_dim
    head = layout.head_macs(model)
    prefill = context * per_token + products + head
    if not layout.causal:  # an encoder: one bidirectional pass, no cache and no decoding
        kv = decode = per_token = head = 0
    return DecoderCost(
        params=params,
        weight_bytes=params * element - saved,
        kv_bytes=batch * kv * element,
        prefill_macs=prefill,
        decode_macs=per_token + decode + head,
        context=context,
        batch=batch,
        layers=len(choice.layers),
        prefill_attention_macs=products,
        decode_attention_macs=decode,
    )


def _layer(a: AttentionView, m: MlpView, channels: int, groups: int) -> tuple[int, int, int, list]:
    """A layer's projection parameters, MACs per token, query width and projections' ``(in, out, bias)``
    shapes (:func:`~spaces.decoder.projection_shapes`), at ``channels`` and ``groups`` kept, all dense."""
    shapes = projection_shapes(a, m, channels, groups)
    params = sum(i * o + b for i, o, b in shapes)
    macs = sum(i * o for i, o, _ in shapes)
    return params, macs, groups * a.per_group * a.head_dim, shapes


def _weights(layout: DecoderLayout, shapes: list, ranks: Mapping[str, tuple[str, int]]) -> list[tuple[int, int]]:
    """Each weight matrix of a layer's projections as ``(elements, output channels)``: a dense projection's own,
    a factorized one's two factors (``in x r`` to ``r`` outputs, then ``r x out``), which are also its MACs per
    token."""
    names = layout.projection_names("attn") + layout.projection_names("mlp")
    out: list[tuple[int, int]] = []
    for k, (n, o, _) in enumerate(shapes):
        factored = ranks.get(names[k]) if names else None
        out += [(n * o, o)] if factored is None else [(n * factored[1], factored[1]), (factored[1] * o, o)]
    return out
