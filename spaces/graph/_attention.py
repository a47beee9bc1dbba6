"""Attention: whole-head pruning of ``nn.MultiheadAttention`` and the MACs of products between activations.

**Heads, not head dimensions.** A space prunes a multi-head attention by whole
heads: a head's query, key and value rows of ``in_proj_weight`` (and bias) and
its columns of ``out_proj`` go together, ``num_heads`` drops by one per head,
and the head width ``head_dim`` is kept. Pruning head dimensions instead
(narrower q/k/v per head) keeps every attention map, so the softmax, the masks
and the per-head overhead of the attention kernels stay, and it changes the
attention's scale ``1/sqrt(head_dim)`` the model was trained with; removing a
head removes its attention map outright and leaves the other heads computing
exactly what they computed. The MLP's hidden width is an ordinary channel group
(its two linear layers); the embedding width is the residual stream's group,
which torchvision's ``VisionTransformer`` cannot lose (its ``_process_input``
reshapes to the hard-coded ``hidden_dim``), so the self-check excludes it there.

Two kinds of attention have head groups (:func:`head_kind`): torch's
``nn.MultiheadAttention`` (torchvision's ViT) and timm-style attentions
(timm's ``Attention``: ViT, DeiT, ...), whose forward reads ``num_heads``,
``head_dim`` and ``attn_dim``, so pruning a head is its ``qkv`` rows, its
``proj`` columns and those two counts (:func:`drop_heads`).

``nn.MultiheadAttention`` cannot run with fewer heads than ``embed_dim``
implies (it derives ``head_dim = embed_dim // num_heads``), so a space switches
the class of each eligible attention in its private copy (and in every model a
plan is applied to) to :class:`HeadPrunableAttention`, a subclass with the same
parameters and state-dict keys whose forward takes ``head_dim`` as stored and
calls ``out_proj`` as a module (so its cost is counted like any linear layer
and it can be factorized). The switch is the mechanism
``torch.nn.utils.parametrize`` itself uses; the forward matches PyTorch's own
(tested with and without masks, batch-first or not, with attention weights).

**What attention costs.** A head-prunable attention on ``N`` sequences of
``L`` tokens with ``H`` heads of width ``d`` and embedding ``E`` costs
``N*L*E*3*H*d`` (q, k, v projections) + ``2*N*H*L*L*d`` (``Q @ K^T`` and the
weighted sum of ``V``) + ``N*L*H*d*E`` (output projection) MACs. Products
between two activations elsewhere (``scaled_dot_product_attention``,
``matmul``/``@``, ``bmm``, ``baddbmm``, ``einsum`` and an attention the space does not
switch) are counted by :func:`product_macs` with the same formulas, both when
measuring (fvcore handles) and analytically (:func:`functional_macs`: the
products a forward pass makes outside head-prunable attentions, a constant the
self-check requires no pruning group to change).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from spaces._errors import UnsupportedModelError

__all__ = [
    "HeadPrunableAttention",
    "convert",
    "counting_products",
    "drop_heads",
    "functional_macs",
    "head_kind",
    "ineligible",
    "product_macs",
    "prune_heads",
    "revert",
]


class HeadPrunableAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads can be removed (see the module docs); same parameters, same outputs."""

    head_dim: int

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # as torch's: is_causal is a hint about attn_mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        unbatched = query.dim() == 2
        same = query is key and key is value
        q, k, v = (t.unsqueeze(1 if not self.batch_first else 0) if unbatched else t for t in (query, key, value))
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        n, length, _ = q.shape
        q, k, v = self._project(q, q if same else k, q if same else v)
        mask = _merged_mask(attn_mask, key_padding_mask, (n, self.num_heads, length, k.shape[-2]), q)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v projected and split into heads: ``(N, H, tokens, head_dim)`` each."""
        if q is k and k is v:
            parts = F.linear(q, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            ws = self.in_proj_weight.chunk(3)
            bs = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
            parts = tuple(F.linear(x, w, b) for x, w, b in zip((q, k, v), ws, bs, strict=True))
        return tuple(p.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for p in parts)


def _merged_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    shape: tuple[int, int, int, int],
    like: torch.Tensor,
) -> torch.Tensor | None:
    """PyTorch's two masks (boolean True = not attended, or additive floats) as one additive ``(N, H, L, S)`` mask."""
    n, heads, length, source = shape

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype != torch.bool:
            return m.to(like.dtype)
        return torch.zeros(m.shape, dtype=like.dtype, device=like.device).masked_fill(m, float("-inf"))

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.reshape(n, heads, length, source) if mask.dim() == 3 else mask.reshape(1, 1, length, source)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).reshape(n, 1, 1, source)
        mask = pad if mask is None else mask + pad
    return mask


def head_kind(mod: nn.Module) -> str | None:
    """How ``mod``'s heads are pruned: ``"torch"`` (``nn.MultiheadAttention``), ``"qkv"`` (timm-style) or not (None).

    A timm-style attention is any module with timm's ``Attention`` contract: a
    ``qkv`` linear layer of ``3 * attn_dim`` outputs (q, k, v, each head by
    head), a ``proj`` linear layer of ``attn_dim`` inputs, and integer
    ``num_heads``, ``head_dim`` and ``attn_dim = num_heads * head_dim`` its
    forward reads; a normalization over ``attn_dim`` or a gate is not
    supported. Whatever matches, the space's self-check verifies head pruning
    on it by masked equivalence and excludes it where it is wrong.
    """
    if type(mod) in (nn.MultiheadAttention, HeadPrunableAttention):
        return "torch" if ineligible(mod) is None else None
    qkv, proj = getattr(mod, "qkv", None), getattr(mod, "proj", None)
    heads, dim, width = (getattr(mod, a, None) for a in ("num_heads", "head_dim", "attn_dim"))
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return None
    if not (isinstance(heads, int) and isinstance(dim, int) and isinstance(width, int)) or width != heads * dim:
        return None
    plain = isinstance(getattr(mod, "norm", None), (nn.Identity, type(None))) and getattr(mod, "gate", None) is None
    return "qkv" if plain and qkv.out_features == 3 * width and proj.in_features == width else None


def drop_heads(mod: Any, idxs: Sequence[int]) -> nn.Module:
    """Lower a timm-style attention's ``num_heads`` and ``attn_dim`` by the heads ``idxs`` (its layers go apart)."""
    mod.num_heads = int(mod.num_heads) - len(idxs)
    mod.attn_dim = mod.num_heads * int(mod.head_dim)
    return mod


def ineligible(mod: nn.Module) -> str | None:
    """Why ``mod`` (an ``nn.MultiheadAttention``) cannot have its heads pruned; ``None`` if it can."""
    if type(mod) not in (nn.MultiheadAttention, HeadPrunableAttention):
        return f"{type(mod).__name__} is not torch's MultiheadAttention"
    if not mod._qkv_same_embed_dim:
        return "keys or values have their own width (kdim/vdim)"
    if mod.bias_k is not None or mod.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported"
    if mod.num_heads * mod.head_dim != mod.embed_dim:
        return "its heads were pruned already (num_heads * head_dim != embed_dim)"
    return None


def convert(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Switch the attentions ``names`` of ``model`` (in place) to :class:`HeadPrunableAttention`."""
    for name in names:
        mod = model.get_submodule(name)
        if type(mod) is nn.MultiheadAttention:
            mod.__class__ = HeadPrunableAttention  # head_dim (embed_dim // num_heads) is already set
    return model


def revert(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Switch the attentions ``names`` of ``model`` (in place) back to ``nn.MultiheadAttention``."""
    for name in names:
        mod = model.get_submodule(name)
        if type(mod) is HeadPrunableAttention:
            mod.__class__ = nn.MultiheadAttention  # type: ignore[assignment]
    return model


def prune_heads(mod: nn.MultiheadAttention, idxs: Sequence[int]) -> nn.MultiheadAttention:
    """Remove the rows ``idxs`` of ``mod.in_proj_weight`` (whole heads' q, k and v rows) and set ``num_heads``.

    The pruning function of a head group's attention member (its output
    projection's columns are removed by torch-pruning's linear function).
    """
    keep = torch.ones(mod.in_proj_weight.shape[0], dtype=torch.bool)
    keep[list(idxs)] = False
    mod.in_proj_weight = nn.Parameter(mod.in_proj_weight.data[keep], requires_grad=mod.in_proj_weight.requires_grad)
    if mod.in_proj_bias is not None:
        mod.in_proj_bias = nn.Parameter(mod.in_proj_bias.data[keep], requires_grad=mod.in_proj_bias.requires_grad)
    mod.num_heads = int(keep.sum()) // (3 * mod.head_dim)
    return mod


# ------------------------------------------------------------------ products between activations
def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _attention_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """``scaled_dot_product_attention`` on ``(..., L, d)`` queries, ``(..., S, d)`` keys, ``(..., S, dv)`` values."""
    return _numel(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


def _mha_macs(query: Sequence[int], key: Sequence[int], embed: int, inner: int, batch_first: bool) -> int:
    """A whole multi-head attention: projections, attention products, output projection (see the module docs)."""
    if len(query) == 2:  # unbatched: one sequence
        at = 0 if batch_first else 1
        query, key = (*query[:at], 1, *query[at:]), (*key[:at], 1, *key[at:])
    n, length = (query[0], query[1]) if batch_first else (query[1], query[0])
    source = key[1] if batch_first else key[0]
    e_in = int(query[-1])
    return n * (length + 2 * source) * e_in * inner + 2 * n * length * source * inner + n * length * inner * embed


def _einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """``einsum`` contracted left to right: each step costs the product of the sizes of every index it touches."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    expanded = []
    for term, shape in zip(terms, shapes, strict=True):  # "..." as one private index per broadcast dimension
        extra = len(shape) - len(term.replace("...", ""))
        expanded.append(term.replace("...", "".join(chr(0x100 + i) for i in range(extra - 1, -1, -1))))
    sizes: dict[str, int] = {}
    for term, shape in zip(expanded, shapes, strict=True):
        for c, n in zip(term, shape, strict=True):
            sizes[c] = max(sizes.get(c, 1), int(n))  # a broadcast index of size 1 takes the other operand's size
    if not arrow:
        rhs = "".join(sorted(c for c in sizes if lhs.count(c) == 1))
    macs, current = 0, set(expanded[0])
    for i, term in enumerate(expanded[1:], start=1):
        touched = current | set(term)
        macs += math.prod(sizes[c] for c in touched)
        later = set(rhs) | {c for c in sizes if c >= chr(0x100)} | set("".join(expanded[i + 1 :]))
        current = touched & later
    return macs


def product_macs(op: str, shapes: Sequence[Sequence[int]], out: Sequence[int], extra: dict[str, Any]) -> int:
    """MACs of product ``op`` from its operand shapes (``shapes``), its output shape and its other arguments."""
    if op == "einsum":
        return _einsum_macs(extra["equation"], shapes)
    if op in ("matmul", "bmm"):
        return _numel(out) * int(shapes[0][-1])
    if op == "baddbmm":
        return _numel(out) * int(shapes[1][-1])
    if op == "sdpa":
        return _attention_macs(shapes[0], shapes[1], shapes[2])
    if op == "mha":  # shapes: query, key, qkv weight, out-projection weight
        return _mha_macs(shapes[0], shapes[1], int(shapes[3][0]), int(shapes[2][0]) // 3, extra["batch_first"])
    raise KeyError(op)


_TORCH_PRODUCTS: dict[Callable[..., Any], str] = {
    torch.matmul: "matmul",
    torch.Tensor.matmul: "matmul",
    torch.Tensor.__matmul__: "matmul",
    torch.bmm: "bmm",
    torch.Tensor.bmm: "bmm",
    torch.baddbmm: "baddbmm",
    torch.Tensor.baddbmm: "baddbmm",
    F.scaled_dot_product_attention: "sdpa",
    torch.einsum: "einsum",
}


class _Products(TorchFunctionMode):
    """Counts the products a forward pass makes while ``depth`` is 0 (outside head-prunable attentions).

    Also records, per linear layer, the positions its weight is applied at by
    ``F.linear`` calls outside the layer's own forward (``linear_uses``; e.g.
    torchvision's Swin calls ``F.linear(x, self.qkv.weight)``), which module
    hooks cannot see.
    """

    def __init__(self, weights: dict[int, str], uses: dict[str, int]) -> None:
        super().__init__()
        self.depth, self.macs = 0, 0
        self.weights, self.active = weights, set[str]()
        self.linear_uses, self.functional = uses, set[str]()  # positions (in call order), and the layers seen

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._count(func, args, kwargs, out)
        except Exception as exc:  # an op called in a way the counting does not know: refuse, never miscount
            name = getattr(func, "__name__", repr(func))
            raise UnsupportedModelError(f"cannot count the MACs of {name}: {type(exc).__name__}: {exc}") from None
        return out

    def _count(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        op = _TORCH_PRODUCTS.get(func)
        if op is not None and self.depth == 0:
            if op == "einsum":
                equation, *operands = args
                operands = operands[0] if len(operands) == 1 and isinstance(operands[0], (list, tuple)) else operands
                extra = {"equation": equation}
            else:
                operands, extra = list(args) + [kwargs[n] for n in _OPERANDS[op][len(args) :] if n in kwargs], {}
            shapes = [tuple(a.shape) for a in operands if isinstance(a, torch.Tensor)]
            self.macs += product_macs(op, shapes, tuple(out.shape), extra)
        elif func is F.multi_head_attention_forward and self.depth == 0:
            self.macs += _functional_mha(args, kwargs)
        elif func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            name = self.weights.get(id(weight))
            if name is not None and name not in self.active:
                self.linear_uses[name] = self.linear_uses.get(name, 0) + x.numel() // weight.shape[1]
                self.functional.add(name)


_OPERANDS = {
    "matmul": ("input", "other"),
    "bmm": ("input", "mat2"),
    "baddbmm": ("input", "batch1", "batch2"),
    "sdpa": ("query", "key", "value"),
}


def _functional_mha(args: Any, kwargs: dict[str, Any]) -> int:
    """``F.multi_head_attention_forward`` (sequence-first; packed or separate q/k/v projection weights)."""
    bound = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs).arguments
    query, key, out_w = bound["query"], bound["key"], bound["out_proj_weight"]
    n = query.shape[1] if query.dim() == 3 else 1
    length, source = query.shape[0], key.shape[0]
    if bound.get("use_separate_proj_weight"):
        wq, wk, wv = bound["q_proj_weight"], bound["k_proj_weight"], bound["v_proj_weight"]
        inner = wq.shape[0]
        projections = n * length * wq.numel() + n * source * (wk.numel() + wv.numel())
        return projections + 2 * n * length * source * inner + n * length * out_w.numel()
    shapes = [query.shape, key.shape, bound["in_proj_weight"].shape, out_w.shape]
    return product_macs("mha", shapes, (), {"batch_first": False})


@contextlib.contextmanager
def counting_products(
    model: nn.Module, skip: Iterable[str] = (), uses: dict[str, int] | None = None
) -> Iterator[_Products]:
    """Within the block, count the products ``model``'s forward passes make outside its modules named ``skip``.

    ``uses`` (default: a new dict) receives, in call order, the positions of
    linear layers' weights applied outside their forward (see :class:`_Products`).
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    mode = _Products({id(m.weight): n for n, m in linears.items()}, {} if uses is None else uses)

    def enter(mod: nn.Module, *_: Any) -> None:
        mode.depth += 1

    def leave(mod: nn.Module, *_: Any) -> None:
        mode.depth -= 1

    def calling(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        return (lambda *_: mode.active.add(name)), (lambda *_: mode.active.discard(name))

    mods = [model.get_submodule(n) for n in skip]
    hooks = [h for m in mods for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    for name, m in linears.items():
        pre, post = calling(name)
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with mode:
            yield mode
    finally:
        for h in hooks:
            h.remove()


def functional_macs(model: nn.Module, inputs: Sequence[Any], skip: Iterable[str] = ()) -> int:
    """The MACs of the products one forward pass of ``model`` makes outside its modules named ``skip``."""
    with torch.no_grad(), counting_products(model, skip) as products:
        model(*inputs)
    return products.macs
