"""Low-rank factorization of conv and linear layers: surgery and exact costs.

Methods (all executed as chains of ordinary layers, never reconstructed into a
full kernel, so the MACs really fall):

``svd``
    The kernel reshaped to ``[C_out, C_in*k_h*k_w]`` is truncated to rank ``r``
    (``U_r sqrt(S_r)`` and ``sqrt(S_r) V_r^T``): a ``k_h x k_w`` conv
    ``C_in -> r`` with the layer's stride, padding and dilation, then a ``1x1``
    conv ``r -> C_out`` carrying the bias. A Linear becomes two Linears. By
    Eckart–Young this is the best rank-``r`` approximation of the kernel.
``tucker2``
    tensorly's partial Tucker over the channel modes, ranks ``(r_in, r_out)``:
    ``1x1`` conv ``C_in -> r_in`` (at the input resolution), ``k x k`` conv
    ``r_in -> r_out`` (the layer's stride/padding), ``1x1`` conv
    ``r_out -> C_out`` with the bias. Convolutions only.
``tt``
    A tensor-train of the kernel ordered ``(C_in, k_h, k_w, C_out)`` (tensorly's
    TT-SVD; in the spirit of TTP, Su et al. 2018), ranks ``(r1, r2, r3)``,
    executed as four convolutions: ``1x1`` ``C_in -> r1``, ``k_h x 1``
    ``r1 -> r2`` (vertical stride/padding/dilation), ``1 x k_w`` ``r2 -> r3``
    (horizontal), ``1x1`` ``r3 -> C_out`` with the bias. The composition equals
    the convolution with the contracted kernel exactly. Convolutions with
    ``k_h * k_w > 1`` only.

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

from spaces._plan import METHODS

__all__ = ["METHODS", "LayerGeom", "factorize_layer"]


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
        if self.kind == "linear":
            return ("svd",)
        if self.kh * self.kw == 1:
            return ("svd", "tucker2")
        return METHODS

    def with_channels(self, cout: int, cin: int) -> LayerGeom:
        return replace(self, cout=int(cout), cin=int(cin))

    def full_ranks(self, method: str) -> tuple[int, ...]:
        k = self.kh * self.kw
        if method == "svd":
            return (min(self.cout, self.cin * k),)
        if method == "tucker2":
            return (self.cin, self.cout)
        return (
            min(self.cin, k * self.cout),
            min(self.cin * self.kh, self.kw * self.cout),
            min(self.cin * k, self.cout),
        )

    def dense_cost(self) -> tuple[int, int]:
        """(MACs, weight parameters) of the dense layer."""
        w = self.cout * self.cin * self.kh * self.kw
        return self.s_out * w, w

    def factor_cost(self, method: str, ranks: tuple[int, ...]) -> tuple[int, int]:
        """(MACs, weight parameters) of the factorized layer (bias not included)."""
        ci, co, kh, kw = self.cin, self.cout, self.kh, self.kw
        if method == "svd":
            (r,) = ranks
            p1, p2 = r * ci * kh * kw, co * r
            return self.s_out * (p1 + p2), p1 + p2
        if method == "tucker2":
            r1, r2 = ranks
            p1, p2, p3 = ci * r1, r1 * r2 * kh * kw, r2 * co
            return self.s_in * p1 + self.s_out * (p2 + p3), p1 + p2 + p3
        r1, r2, r3 = ranks
        p1, p2, p3, p4 = ci * r1, r1 * r2 * kh, r2 * r3 * kw, r3 * co
        return self.s_in * p1 + self.s_mid * p2 + self.s_out * (p3 + p4), p1 + p2 + p3 + p4

    def normalize(self, method: str, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """Clamp ``ranks`` to what the decomposition can deliver (TT-SVD's left-to-right bounds)."""
        k = self.kh * self.kw
        if method == "svd":
            return (max(1, min(ranks[0], self.cout, self.cin * k)),)
        if method == "tucker2":
            # HOOI's unfoldings: [C_in, r_out*k] and [C_out, r_in*k] bound each rank by the other
            r_in = max(1, min(ranks[0], self.cin, self.cout * k))
            r_out = max(1, min(ranks[1], self.cout, r_in * k))
            return (min(r_in, r_out * k), r_out)
        r1 = max(1, min(ranks[0], self.cin, k * self.cout))
        r2 = max(1, min(ranks[1], r1 * self.kh, self.kw * self.cout))
        return (r1, r2, max(1, min(ranks[2], r2 * self.kw, self.cout)))

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


def _conv(cin: int, cout: int, kernel: tuple[int, int], src: nn.Conv2d, axes: str, bias: bool) -> nn.Conv2d:
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
def factorize_layer(layer: nn.Module, method: str, ranks: tuple[int, ...]) -> nn.Sequential:
    """Replace ``layer`` (Conv2d with groups=1, or Linear) by its factorization at ``ranks``.

    No break-even rule here: this is the surgery. ``ranks`` are clamped by
    :meth:`LayerGeom.normalize` to what the decomposition can deliver.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"only Conv2d and Linear layers can be factorized, got {type(layer).__name__}")
    w = layer.weight.detach()
    dtype, device = w.dtype, w.device
    bias = layer.bias.detach() if layer.bias is not None else None
    w64 = w.double().cpu()
    if isinstance(layer, nn.Linear):
        geom = LayerGeom("", "linear", w.shape[0], w.shape[1])
    else:
        geom = LayerGeom("", "conv", w.shape[0], w.shape[1], w.shape[2], w.shape[3])
    ranks = geom.normalize(method, tuple(int(r) for r in ranks))

    def put(mod: nn.Conv2d | nn.Linear, weight: torch.Tensor | np.ndarray, b: torch.Tensor | None = None) -> nn.Module:
        t = torch.as_tensor(np.ascontiguousarray(weight)) if isinstance(weight, np.ndarray) else weight
        mod.to(device=device, dtype=dtype)
        mod.weight.copy_(t.reshape(mod.weight.shape))
        if b is not None and mod.bias is not None:
            mod.bias.copy_(b)
        return mod

    if isinstance(layer, nn.Linear):
        if method != "svd":
            raise ValueError(f"method {method!r} needs a convolution; Linear layers take 'svd'")
        (r,) = ranks
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        root = s[:r].sqrt()
        first = put(nn.Linear(layer.in_features, r, bias=False), root[:, None] * vh[:r])
        second = put(nn.Linear(r, layer.out_features, bias=bias is not None), u[:, :r] * root, bias)
        return nn.Sequential(first, second)

    if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        raise ValueError("only Conv2d with groups=1 and Linear layers can be factorized")
    cout, cin, kh, kw = w.shape
    has_bias = bias is not None
    if method == "svd":
        (r,) = ranks
        u, s, vh = torch.linalg.svd(w64.reshape(cout, -1), full_matrices=False)
        root = s[:r].sqrt()
        first = put(_conv(cin, r, (kh, kw), layer, "hw", False), root[:, None] * vh[:r])
        second = put(_conv(r, cout, (1, 1), layer, "", has_bias), u[:, :r] * root, bias)
        return nn.Sequential(first, second)

    import tensorly as tl
    from tensorly.decomposition import partial_tucker, tensor_train

    tl.set_backend("numpy")
    arr = w64.numpy()
    if method == "tucker2":
        r_in, r_out = ranks
        (core, (u_out, u_in)), _ = partial_tucker(arr, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=20)
        return nn.Sequential(
            put(_conv(cin, r_in, (1, 1), layer, "", False), u_in.T),
            put(_conv(r_in, r_out, (kh, kw), layer, "hw", False), core),
            put(_conv(r_out, cout, (1, 1), layer, "", has_bias), u_out, bias),
        )
    if kh * kw == 1:
        raise ValueError("method 'tt' needs a kernel larger than 1x1; use 'svd' for 1x1 convolutions")
    r1, r2, r3 = ranks
    g1, g2, g3, g4 = tensor_train(arr.transpose(1, 2, 3, 0), rank=[1, r1, r2, r3, 1]).factors
    return nn.Sequential(
        put(_conv(cin, r1, (1, 1), layer, "", False), g1[0].T),  # [r1, cin]
        put(_conv(r1, r2, (kh, 1), layer, "h", False), g2.transpose(2, 0, 1)),  # [r2, r1, kh]
        put(_conv(r2, r3, (1, kw), layer, "w", False), g3.transpose(2, 0, 1)),  # [r3, r2, kw]
        put(_conv(r3, cout, (1, 1), layer, "", has_bias), g4[:, :, 0].T, bias),  # [cout, r3]
    )
