"""Where a decoder-only language model keeps its layers, attentions and MLPs: one layout per family.

A language model is not traced like a vision model. Its residual stream, its
rotary embeddings and its key-value cache make the channel graph of a whole
decoder one tangle for a generic tracer (torch-pruning's dependency graph does
not finish on a one-layer ``LlamaForCausalLM``), while every family names its
few structures plainly. So the decoder path reads them from a **layout**, as
SliceGPT's model adapters and LLM-Pruner's per-family code do: the decoder
layers, and in each the attention's query, key, value and output projections
with its head counts, and the MLP's gate, up and down projections.

The prunable structures are the same in every family:

* **the MLP's intermediate channels** of each layer, gate, up and down coupled
  (channel ``j`` is row ``j`` of gate and up, column ``j`` of down);
* **the attention's key-value groups** of each layer: one key head, one value
  head and the query heads that read them (grouped-query attention) go
  together, so every kept group keeps the layer's ratio of query heads to key
  heads, which the family's attention takes from its config; with as many key
  heads as query heads (multi-head attention), a group is one head;
* **whole decoder layers** (depth), which a plan drops from the layer list.

The hidden width (the residual stream), the embedding, the final norm and the
output head are never changed. Layouts are a :class:`~spaces.Registry`
(``LAYOUTS``, entry-point group ``prunetune.layouts``): a new family is one
subclass of :class:`DecoderLayout` and one registration.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from spaces._errors import UnsupportedModelError
from spaces._registry import Registry

__all__ = [
    "LAYOUTS",
    "AttentionView",
    "BertLayout",
    "DecoderLayout",
    "Gpt2Layout",
    "LlamaLayout",
    "MlpView",
    "layout_of",
    "narrowed",
    "register_layout",
]


@dataclass(frozen=True)
class AttentionView:
    """One layer's attention: its projections' weights and head counts (``n_heads`` query heads, ``n_kv`` key heads).

    The weights are views of the model's parameters in ``nn.Linear``'s
    convention (``[out, in]``), whatever module holds them, so that importance
    reads and tests write them alike; ``qkv_bias`` says whether the query, key
    and value projections have biases, ``o_bias`` is the output projection's.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    o_bias: torch.Tensor | None
    qkv_bias: bool
    n_heads: int
    n_kv: int
    head_dim: int

    @property
    def per_group(self) -> int:
        """Query heads per key-value group."""
        return self.n_heads // self.n_kv

    @property
    def hidden(self) -> int:
        return self.q.shape[1]


@dataclass(frozen=True)
class MlpView:
    """One layer's MLP, ``down(act(gate(x)) * up(x))`` or ``down(act(up(x)))`` without a gate, as weight views."""

    gate: torch.Tensor | None
    up: torch.Tensor
    down: torch.Tensor
    up_bias: bool  # gate and up
    down_bias: torch.Tensor | None

    @property
    def width(self) -> int:
        """The intermediate channels."""
        return self.up.shape[0]


class DecoderLayout(ABC):
    """How one family of decoder-only models is built (see the module docs)."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # the ``config.model_type`` values it reads
    causal: ClassVar[bool] = True  # False: an encoder (no KV cache, no decoding; a classifier's logits)

    @abstractmethod
    def layers_path(self, model: nn.Module) -> str:
        """The dotted name of the ``nn.ModuleList`` of decoder layers."""

    @abstractmethod
    def attention(self, layer: nn.Module) -> AttentionView:
        """One layer's attention."""

    @abstractmethod
    def mlp(self, layer: nn.Module) -> MlpView:
        """One layer's MLP."""

    @abstractmethod
    def output_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The attention's output projection and the MLP's down projection, whose inputs calibration reads."""

    @abstractmethod
    def narrow_attention(self, layer: nn.Module, q_rows: torch.Tensor, kv_rows: torch.Tensor) -> None:
        """Keep only the query rows ``q_rows`` (and output columns) and key and value rows ``kv_rows``, in place."""

    @abstractmethod
    def narrow_mlp(self, layer: nn.Module, channels: torch.Tensor) -> None:
        """Keep only the intermediate ``channels``, in place."""

    @abstractmethod
    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        """Keep only the layers ``keep`` (indices, in order), in place, and tell the model's config and cache."""

    def head_macs(self, model: nn.Module) -> int:
        """MACs of the model's head for one position: a causal model's output embedding (the logits of the last
        position, what generation computes)."""
        get: Any = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"{type(model).__name__} has no linear output head")
        return head.in_features * head.out_features

    def window(self, model: nn.Module, index: int) -> int | None:
        """The sliding window of layer ``index``'s attention (None: it attends to the whole context)."""
        return None

    def projections(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        """The layer's projections (attention and MLP) that per-layer bits quantize; empty: this layout's
        layers cannot take bits (a plan with bits on them is a one-line error)."""
        return ()

    def projection_names(self, kind: str) -> tuple[str, ...]:
        """The dotted names, inside a layer, of the ``nn.Linear`` projections of ``kind`` (``"attn"``: query, key,
        value, output; ``"mlp"``: gate, up, down), in the order :func:`spaces.decoder.projection_shapes` lists
        their shapes; empty: this layout's projections cannot be factorized (a plan with ranks on them is a
        one-line error)."""
        return ()

    def config_fields(self, model: nn.Module) -> dict[str, Any] | None:
        """The family's config fields that describe ``model`` as it is now, or None when its config cannot.

        A compressed model whose layers all have the same widths and head counts
        is an ordinary model of its family: with these fields its config rebuilds
        it in ``transformers`` alone (``save_pretrained``, then ``from_pretrained``).
        """
        return None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order."""
        layers = model.get_submodule(self.layers_path(model))
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedModelError(f"{self.layers_path(model)} of {type(model).__name__} is not a ModuleList")
        return layers


class LlamaLayout(DecoderLayout):
    """Llama, Mistral, Qwen2 and Qwen3: ``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``.

    The attention reads its head width from ``head_dim`` and takes the head
    count from the projections' shapes (``view(..., -1, head_dim)``), and the
    ratio of query to key heads from ``num_key_value_groups``: removing whole
    key-value groups leaves that ratio as it is, so the attention needs no
    change beyond its projections. Qwen3's per-head ``q_norm`` and ``k_norm``
    normalize over the head width, which pruning keeps. The model iterates
    ``layers[: config.num_hidden_layers]`` and its cache is indexed by each
    attention's ``layer_idx``: dropping layers sets both, and the per-layer
    ``config.layer_types`` (sliding or full attention) where the config has it.
    """

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")

    def layers_path(self, model: nn.Module) -> str:
        return "model.layers"

    def attention(self, layer: nn.Module) -> AttentionView:
        a: Any = layer.self_attn
        d = int(a.head_dim)
        q, k, v, o = a.q_proj, a.k_proj, a.v_proj, a.o_proj
        n_heads, n_kv = q.out_features // d, k.out_features // d
        return AttentionView(q.weight, k.weight, v.weight, o.weight, o.bias, q.bias is not None, n_heads, n_kv, d)

    def mlp(self, layer: nn.Module) -> MlpView:
        m: Any = layer.mlp
        return MlpView(
            m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight, m.up_proj.bias is not None, m.down_proj.bias
        )

    def output_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        a: Any = layer
        return a.self_attn.o_proj, a.mlp.down_proj

    def projections(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        a: Any = layer
        attn, mlp = a.self_attn, a.mlp
        return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def projection_names(self, kind: str) -> tuple[str, ...]:
        if kind == "attn":
            return "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
        return "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"

    def narrow_attention(self, layer: nn.Module, q_rows: torch.Tensor, kv_rows: torch.Tensor) -> None:
        a: Any = layer.self_attn
        a.q_proj, a.k_proj = narrowed(a.q_proj, rows=q_rows), narrowed(a.k_proj, rows=kv_rows)
        a.v_proj, a.o_proj = narrowed(a.v_proj, rows=kv_rows), narrowed(a.o_proj, cols=q_rows)

    def narrow_mlp(self, layer: nn.Module, channels: torch.Tensor) -> None:
        m: Any = layer.mlp
        m.gate_proj, m.up_proj = narrowed(m.gate_proj, rows=channels), narrowed(m.up_proj, rows=channels)
        m.down_proj = narrowed(m.down_proj, cols=channels)

    def window(self, model: nn.Module, index: int) -> int | None:
        """Mistral's ``sliding_window`` holds for every layer; Qwen2's and Qwen3's for those ``layer_types`` say."""
        config: Any = model.config
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if window is None or (types is not None and types[index] != "sliding_attention"):
            return None
        return int(window)

    def config_fields(self, model: nn.Module) -> dict[str, Any] | None:
        shapes = {(self.mlp(x).width, self.attention(x).n_heads, self.attention(x).n_kv) for x in self.layers(model)}
        if len(shapes) != 1:
            return None
        (width, heads, kv), d = shapes.pop(), self.attention(self.layers(model)[0]).head_dim
        config: Any = model.config
        if config.model_type == "llama" and config.hidden_size % heads:
            return None  # LlamaConfig refuses a width its head count does not divide, head_dim given or not
        return {"intermediate_size": width, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": d}

    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        layers = self.layers(model)
        kept = [layers[i] for i in keep]
        for idx, layer in enumerate(kept):
            attention: Any = layer.self_attn
            attention.layer_idx = idx
        parent: Any = model.get_submodule(self.layers_path(model).rpartition(".")[0])
        parent.layers = nn.ModuleList(kept)
        config: Any = model.config
        config.num_hidden_layers = len(kept)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]


class Gpt2Layout(DecoderLayout):
    """GPT-2: ``transformer.h[i].attn.c_attn`` (query, key and value fused) and ``c_proj``; ``mlp.c_fc`` and ``c_proj``.

    Its projections are ``Conv1D`` modules, whose weights are stored ``[in,
    out]`` (the views transpose them). Attention is multi-head (a key-value
    group is one head); ``c_attn``'s output is split into query, key and value
    by ``split_size``, which narrowing sets with ``num_heads``. A model that
    scales attention by its layer index (``scale_attn_by_inverse_layer_idx``)
    cannot drop layers: renumbering them would change the scales.
    """

    name = "gpt2"
    model_types = ("gpt2",)

    def layers_path(self, model: nn.Module) -> str:
        return "transformer.h"

    def attention(self, layer: nn.Module) -> AttentionView:
        a: Any = layer.attn
        d, width = int(a.head_dim), int(a.split_size)
        w = a.c_attn.weight  # [hidden, 3 * width]
        q, k, v = w[:, :width].T, w[:, width : 2 * width].T, w[:, 2 * width :].T
        heads = width // d
        return AttentionView(q, k, v, a.c_proj.weight.T, a.c_proj.bias, a.c_attn.bias is not None, heads, heads, d)

    def mlp(self, layer: nn.Module) -> MlpView:
        m: Any = layer.mlp
        return MlpView(None, m.c_fc.weight.T, m.c_proj.weight.T, m.c_fc.bias is not None, m.c_proj.bias)

    def output_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        a: Any = layer
        return a.attn.c_proj, a.mlp.c_proj

    def narrow_attention(self, layer: nn.Module, q_rows: torch.Tensor, kv_rows: torch.Tensor) -> None:
        a: Any = layer.attn
        width = int(a.split_size)
        a.c_attn = _conv1d(a.c_attn, out=torch.cat([q_rows, width + kv_rows, 2 * width + kv_rows]))
        a.c_proj = _conv1d(a.c_proj, inp=q_rows)
        a.split_size, a.num_heads = len(q_rows), len(q_rows) // int(a.head_dim)

    def narrow_mlp(self, layer: nn.Module, channels: torch.Tensor) -> None:
        m: Any = layer.mlp
        m.c_fc, m.c_proj = _conv1d(m.c_fc, out=channels), _conv1d(m.c_proj, inp=channels)

    def config_fields(self, model: nn.Module) -> dict[str, Any] | None:
        config: Any = model.config
        widths = {self.mlp(x).width for x in self.layers(model)}
        heads = {self.attention(x).n_heads for x in self.layers(model)}
        if len(widths) != 1 or heads != {config.n_head}:  # its head width is n_embd // n_head: heads stay
            return None
        return {"n_inner": widths.pop()}

    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        config: Any = model.config
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            raise UnsupportedModelError("this GPT-2 scales attention by layer index: its layers cannot be dropped")
        kept = [self.layers(model)[i] for i in keep]
        for idx, layer in enumerate(kept):
            attention: Any = layer.attn
            attention.layer_idx = idx
        transformer: Any = model.get_submodule("transformer")
        transformer.h = nn.ModuleList(kept)
        config.num_hidden_layers = len(kept)


class BertLayout(DecoderLayout):
    """BERT-style encoders for classification: ``bert.encoder.layer[i].attention.self.{query,key,value}``, the
    attention's ``output.dense``, and the MLP's ``intermediate.dense`` and ``output.dense``.

    Attention is multi-head and bidirectional (a key-value group is one head;
    there is no KV cache and no decoding). The attention views its projections
    with ``view(..., -1, head_size)``, so narrowing needs no change beyond them
    (its head count is set for the record). Each sub-layer ends in a LayerNorm
    over the residual sum (post-norm), so a dropped layer is removed from the
    list, not zeroed. The head is the pooler on the first token and the
    classifier (``head_macs``).
    """

    name = "bert"
    model_types = ("bert",)
    causal = False

    def layers_path(self, model: nn.Module) -> str:
        return f"{model.base_model_prefix}.encoder.layer"

    def attention(self, layer: nn.Module) -> AttentionView:
        x: Any = layer
        a, o = x.attention.self, x.attention.output.dense
        d = int(a.attention_head_size)
        heads = a.query.out_features // d
        return AttentionView(
            a.query.weight, a.key.weight, a.value.weight, o.weight, o.bias, a.query.bias is not None, heads, heads, d
        )

    def mlp(self, layer: nn.Module) -> MlpView:
        a: Any = layer
        up, down = a.intermediate.dense, a.output.dense
        return MlpView(None, up.weight, down.weight, up.bias is not None, down.bias)

    def output_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        a: Any = layer
        return a.attention.output.dense, a.output.dense

    def projections(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        return tuple(layer.get_submodule(n) for n in (*self.projection_names("attn"), *self.projection_names("mlp")))

    def projection_names(self, kind: str) -> tuple[str, ...]:
        if kind == "attn":
            return "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"
        return "intermediate.dense", "output.dense"

    def narrow_attention(self, layer: nn.Module, q_rows: torch.Tensor, kv_rows: torch.Tensor) -> None:
        x: Any = layer
        a, out = x.attention.self, x.attention.output
        a.query, a.key, a.value = (narrowed(p, rows=q_rows) for p in (a.query, a.key, a.value))
        out.dense = narrowed(out.dense, cols=q_rows)
        a.num_attention_heads = len(q_rows) // int(a.attention_head_size)
        a.all_head_size = len(q_rows)

    def narrow_mlp(self, layer: nn.Module, channels: torch.Tensor) -> None:
        a: Any = layer
        a.intermediate.dense = narrowed(a.intermediate.dense, rows=channels)
        a.output.dense = narrowed(a.output.dense, cols=channels)

    def head_macs(self, model: nn.Module) -> int:
        """The pooler (a ``hidden x hidden`` dense layer on the first token, where the model has one) and the
        classifier."""
        a: Any = model
        pooler = getattr(a, a.base_model_prefix).pooler
        head = a.classifier
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"{type(model).__name__} has no linear classifier")
        dense = 0 if pooler is None else pooler.dense.in_features * pooler.dense.out_features
        return dense + head.in_features * head.out_features

    def config_fields(self, model: nn.Module) -> dict[str, Any] | None:
        config: Any = model.config
        widths = {self.mlp(x).width for x in self.layers(model)}
        heads = {self.attention(x).n_heads for x in self.layers(model)}
        if len(widths) != 1 or heads != {config.num_attention_heads}:  # its head width is hidden // heads: kept
            return None
        return {"intermediate_size": widths.pop()}

    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        kept = [self.layers(model)[i] for i in keep]
        encoder: Any = model.get_submodule(self.layers_path(model).rpartition(".")[0])
        encoder.layer = nn.ModuleList(kept)
        config: Any = model.config
        config.num_hidden_layers = len(kept)


def narrowed(lin: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` with only the output ``rows`` and input ``cols`` of ``lin`` (same dtype and device)."""
    w = lin.weight.detach()
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    bias = lin.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            b = lin.bias.detach()
            new.bias.copy_(b if rows is None else b.index_select(0, rows.to(b.device)))
    new.train(lin.training)
    return new


def _conv1d(conv: Any, *, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> nn.Module:
    """A copy of a ``Conv1D`` (weight ``[in, out]``, bias ``[out]``) keeping the outputs ``out``, inputs ``inp``."""
    new: Any = copy.deepcopy(conv)
    w, b = conv.weight.detach(), conv.bias.detach()
    if out is not None:
        w, b = w.index_select(1, out.to(w.device)), b.index_select(0, out.to(b.device))
    if inp is not None:
        w = w.index_select(0, inp.to(w.device))
    new.weight, new.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    new.nf = w.shape[1]
    if hasattr(new, "nx"):
        new.nx = w.shape[0]
    return new


LAYOUTS: Registry[DecoderLayout] = Registry(
    "decoder layout",
    DecoderLayout,
    group="prunetune.layouts",
    builtins={
        "llama": "spaces.decoder._layout:LlamaLayout",
        "gpt2": "spaces.decoder._layout:Gpt2Layout",
        "bert": "spaces.decoder._layout:BertLayout",
    },
    error=UnsupportedModelError,
)


def register_layout(layout: DecoderLayout | type[DecoderLayout], *, replace: bool = False) -> DecoderLayout:
    """Register a decoder family's layout (one line per family)."""
    return LAYOUTS.register(layout, replace=replace)


def layout_of(model: nn.Module) -> DecoderLayout:
    """The registered layout of ``model``'s family (``config.model_type``); a one-line error when none reads it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    families: list[str] = []
    for layout in LAYOUTS.loaded():
        if model_type in layout.model_types:
            return layout
        families += layout.model_types
    raise UnsupportedModelError(
        f"no decoder layout reads model_type {model_type!r} ({type(model).__name__}); "
        f"supported: {', '.join(sorted(families))}"
    )
