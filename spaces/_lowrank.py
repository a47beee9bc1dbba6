"""Low-rank factorization of conv and linear layers: surgery and exact costs.

Methods (never reconstructed into a full kernel, so the MACs really fall) sit
behind a registry (:mod:`spaces.factorization`): ``svd`` (truncated SVD of the
kernel reshaped to ``[C_out, C_in*k_h*k_w]``; a Linear becomes two Linears),
``tucker2`` (tensorly's partial Tucker over the channel modes; convolutions
only) and ``tt`` (a tensor-train of the kernel, TTP-style, as four
convolutions; kernels larger than 1x1 only), each a chain of ordinary layers;
``versatile`` / ``versatile_ch`` (versatile filters; kernels of at least 3x3)
a module of its own that runs one convolution per slot of secondary filters.
Each method's module documents what it builds.

Ranks in a plan are an ``int`` (applied to every mode, each capped at that
mode's full rank) or a ``float`` in ``(0, 1]``, a fraction of each mode's full
rank (rounded, at least 1). They are resolved on the layer's *pruned* shape. An
``int`` above the layer's (unpruned) full rank is an error.

Break-even (one rule for every plan, the search's sampler included): the
*break-even rank* (:meth:`LayerGeom.max_useful_rank`) is the largest rank, the
same on every mode, at which the factorized layer still costs fewer MACs and
fewer parameters than the dense one. **A rank at or above the layer's
break-even rank keeps the layer dense** -- exactly the original (pruned) layer,
not factorized -- so a full rank (``1.0``, or the int full rank) never changes
the layer's outputs. Ranks below break-even are factorized at exactly that rank
and always save. A fraction is resolved first (on the pruned shape) and the same
rule applies; for ``tucker2``/``tt``, whose resolved ranks differ per mode,
"at or above break-even" means the factorization costs as many MACs or
parameters as the break-even rank's, or more (for an int rank ``r`` this is
exactly ``r >= max_useful_rank``). See :meth:`LayerGeom.factor_ranks`. A
factorized layer gets exactly its resolved ranks: they are never lowered to fit.

Grouped and depthwise convolutions (``groups > 1``), convolutions with a
non-zero padding mode, Conv1d/Conv3d, transposed convolutions and layers called
more than once per forward pass are not factorizable: a plan naming one is
rejected with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from spaces.factorization import factor_method, method_names

__all__ = ["LayerGeom", "conv_like", "factorize_layer", "loaded"]


@dataclass(frozen=True)
class LayerGeom:
    """Shape of a factorizable layer and where it is applied.

    ``s_in``/``s_mid``/``s_out``: positions (batch included) of the layer's
    input, of the ``tt`` chain's middle (``H_out * W_in``) and of its output;
    for a Linear, all three are the number of rows it multiplies.
    """

    name: str
    kind: str  # "conv" | "linear"
    cout: int
    cin: int
    kh: int = 1
    kw: int = 1
    s_in: int = 1
    s_mid: int = 1
    s_out: int = 1

    @property
    def methods(self) -> tuple[str, ...]:
        """The registered factorization methods that apply to this layer (``svd`` first)."""
        return tuple(m for m in method_names() if factor_method(m).applies(self))

    def with_channels(self, cout: int, cin: int) -> LayerGeom:
        return replace(self, cout=int(cout), cin=int(cin))

    def full_ranks(self, method: str) -> tuple[int, ...]:
        return factor_method(method).full_ranks(self)

    def dense_cost(self) -> tuple[int, int]:
        """(MACs, weight parameters) of the dense layer."""
        w = self.cout * self.cin * self.kh * self.kw
        return self.s_out * w, w

    def factor_cost(self, method: str, ranks: tuple[int, ...]) -> tuple[int, int]:
        """(MACs, weight parameters) of the factorized layer (bias not included)."""
        return factor_method(method).factor_cost(self, ranks)

    def normalize(self, method: str, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """Clamp ``ranks`` to what the decomposition can deliver (e.g. TT-SVD's left-to-right bounds)."""
        return factor_method(method).normalize(self, ranks)

    def resolve(self, method: str, spec: int | float) -> tuple[int, ...]:
        """Ranks for ``spec`` (int or fraction) on this shape, before the break-even rule."""
        full = self.full_ranks(method)
        if isinstance(spec, int):
            return self.normalize(method, tuple(min(spec, f) for f in full))
        return self.normalize(method, tuple(max(1, min(f, math.floor(spec * f + 0.5))) for f in full))

    def saves(self, method: str, ranks: tuple[int, ...]) -> bool:
        macs, params = self.factor_cost(method, ranks)
        dmacs, dparams = self.dense_cost()
        return macs < dmacs and params < dparams

    def factor_ranks(self, method: str, spec: int | float) -> tuple[int, ...] | None:
        """The ranks this layer is factorized at for ``spec``, or None: the layer stays dense.

        The break-even rule: ``spec`` is resolved (:meth:`resolve`); the layer is
        factorized only if those ranks cost strictly fewer MACs *and* parameters
        than the factorization at the break-even rank (:meth:`max_useful_rank`,
        on every mode), i.e. only below break-even; at or above it the layer is
        kept dense. For an int ``spec`` this is ``spec < max_useful_rank(method)``.
        """
        be = self.max_useful_rank(method)
        if be < 2:  # no rank below break-even: factorizing never pays
            return None
        ranks = self.resolve(method, spec)
        macs, params = self.factor_cost(method, ranks)
        be_macs, be_params = self.factor_cost(method, self.resolve(method, be))
        return ranks if macs < be_macs and params < be_params else None

    def max_useful_rank(self, method: str = "svd") -> int:
        """The break-even rank: the largest int rank (same for every mode) that still saves MACs and parameters.

        0 if even rank 1 saves nothing. A plan's rank **at or above** this one
        keeps the layer dense (exactly the original layer; see
        :meth:`factor_ranks`), so the largest rank a plan factorizes this layer
        at is one less. The search samples ranks as fractions of it, 1.0 being
        "dense".
        """
        return _break_even(self, method)


@lru_cache(maxsize=1 << 16)
def _break_even(geom: LayerGeom, method: str) -> int:
    """:meth:`LayerGeom.max_useful_rank` (cached: the cost model asks for it on every plan)."""
    best = 0
    lo, hi = 1, max(geom.full_ranks(method))
    while lo <= hi:  # saves() is monotone in the rank
        mid = (lo + hi) // 2
        if geom.saves(method, geom.resolve(method, mid)):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def conv_like(src: nn.Conv2d, cin: int, cout: int, kernel: tuple[int, int], axes: str, bias: bool) -> nn.Conv2d:
    """A conv inheriting ``src``'s stride/padding/dilation along ``axes`` ("hw", "h", "w" or "")."""

    def pick(v: tuple[int, ...], neutral: int) -> tuple[int, int]:
        return (v[0] if "h" in axes else neutral, v[1] if "w" in axes else neutral)

    pad = src.padding
    if isinstance(pad, str):
        raise ValueError(f"layer with padding={pad!r} cannot be factorized")
    return nn.Conv2d(
        cin,
        cout,
        kernel,
        stride=pick(src.stride, 1),
        padding=pick(tuple(pad), 0),
        dilation=pick(src.dilation, 1),
        bias=bias,
    )


@torch.no_grad()
def loaded(
    mod: nn.Conv2d | nn.Linear, like: torch.Tensor, weight: torch.Tensor | np.ndarray, bias: torch.Tensor | None = None
) -> nn.Module:
    """``mod`` on ``like``'s dtype and device, holding ``weight`` (reshaped to its own) and ``bias``."""
    t = torch.as_tensor(np.ascontiguousarray(weight)) if isinstance(weight, np.ndarray) else weight
    mod.to(device=like.device, dtype=like.dtype)
    mod.weight.copy_(t.reshape(mod.weight.shape))
    if bias is not None and mod.bias is not None:
        mod.bias.copy_(bias)
    return mod


@torch.no_grad()
def factorize_layer(layer: nn.Module, method: str, ranks: tuple[int, ...]) -> nn.Sequential:
    """Replace ``layer`` (Conv2d with groups=1, or Linear) by its factorization at ``ranks``.

    No break-even rule here: this is the surgery. ``ranks`` are clamped by
    :meth:`LayerGeom.normalize` to what the decomposition can deliver.
    """
    if method not in method_names():
        raise ValueError(f"method must be one of {', '.join(method_names())}, got {method!r}")
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"only Conv2d and Linear layers can be factorized, got {type(layer).__name__}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError("only Conv2d with groups=1 and Linear layers can be factorized")
    w = layer.weight
    if isinstance(layer, nn.Linear):
        geom = LayerGeom("", "linear", w.shape[0], w.shape[1])
    else:
        geom = LayerGeom("", "conv", w.shape[0], w.shape[1], w.shape[2], w.shape[3])
    if method not in geom.methods:
        what = "a Linear" if geom.kind == "linear" else f"a {geom.kh}x{geom.kw} convolution"
        raise ValueError(f"method {method!r} does not apply to {what}; it takes {', '.join(geom.methods)}")
    return factor_method(method).factorize(layer, geom, geom.normalize(method, tuple(int(r) for r in ranks)))
