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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from spaces._errors import UnsupportedModelError
from spaces._registry import Registry

__all__ = ["LAYOUTS", "AttentionView", "DecoderLayout", "LlamaLayout", "MlpView", "layout_of", "register_layout"]


@dataclass(frozen=True)
class AttentionView:
    """One layer's attention: its four projections and head counts (``n_heads`` query heads, ``n_kv`` key heads)."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    n_heads: int
    n_kv: int
    head_dim: int

    @property
    def per_group(self) -> int:
        """Query heads per key-value group."""
        return self.n_heads // self.n_kv


@dataclass(frozen=True)
class MlpView:
    """One layer's MLP: ``down(act(gate(x)) * up(x))``; ``gate`` is None in a family without one."""

    gate: nn.Linear | None
    up: nn.Linear
    down: nn.Linear

    @property
    def width(self) -> int:
        """The intermediate channels."""
        return self.up.out_features


class DecoderLayout(ABC):
    """How one family of decoder-only models is built (see the module docs)."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # the ``config.model_type`` values it reads

    @abstractmethod
    def layers_path(self, model: nn.Module) -> str:
        """The dotted name of the ``nn.ModuleList`` of decoder layers."""

    @abstractmethod
    def attention(self, layer: nn.Module) -> AttentionView:
        """One layer's attention."""

    @abstractmethod
    def mlp(self, layer: nn.Module) -> MlpView:
        """One layer's MLP."""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order."""
        layers = model.get_submodule(self.layers_path(model))
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedModelError(f"{self.layers_path(model)} of {type(model).__name__} is not a ModuleList")
        return layers

    @abstractmethod
    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        """Keep only the layers ``keep`` (indices, in order), in place, and tell the model's config and cache."""


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
        head_dim = int(a.head_dim)
        n_heads, n_kv = a.q_proj.out_features // head_dim, a.k_proj.out_features // head_dim
        return AttentionView(a.q_proj, a.k_proj, a.v_proj, a.o_proj, n_heads, n_kv, head_dim)

    def mlp(self, layer: nn.Module) -> MlpView:
        m: Any = layer.mlp
        return MlpView(m.gate_proj, m.up_proj, m.down_proj)

    def keep_layers(self, model: nn.Module, keep: Sequence[int]) -> None:
        layers = self.layers(model)
        kept = [layers[i] for i in keep]
        for idx, layer in enumerate(kept):
            attention: Any = layer.self_attn
            attention.layer_idx = idx
        parent = model.get_submodule(self.layers_path(model).rpartition(".")[0])
        parent.layers = nn.ModuleList(kept)
        config: Any = model.config
        config.num_hidden_layers = len(kept)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]


LAYOUTS: Registry[DecoderLayout] = Registry(
    "decoder layout",
    DecoderLayout,
    group="prunetune.layouts",
    builtins={"llama": "spaces.decoder._layout:LlamaLayout"},
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
