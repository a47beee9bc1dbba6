"""``svd``: truncated SVD of the kernel reshaped to ``[C_out, C_in*k_h*k_w]`` (Eckart–Young optimal).

A ``k_h x k_w`` conv ``C_in -> r`` with the layer's stride, padding and
dilation (``U_r sqrt(S_r)``'s partner ``sqrt(S_r) V_r^T``), then a ``1x1`` conv
``r -> C_out`` carrying the bias. A Linear becomes two Linears.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces.factorization._base import FactorMethod

if TYPE_CHECKING:
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["SVD"]


class SVD(FactorMethod):
    name = "svd"

    def applies(self, geom: LayerGeom) -> bool:
        return True

    def full_ranks(self, geom: LayerGeom) -> tuple[int, ...]:
        return (min(geom.cout, geom.cin * geom.kh * geom.kw),)

    def factor_cost(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        (r,) = ranks
        p1, p2 = r * geom.cin * geom.kh * geom.kw, geom.cout * r
        return geom.s_out * (p1 + p2), p1 + p2

    def normalize(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, ...]:
        return (max(1, min(ranks[0], geom.cout, geom.cin * geom.kh * geom.kw)),)

    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        import torch
        from torch import nn

        from spaces._lowrank import conv_like, loaded

        (r,) = ranks
        w = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        u, s, vh = torch.linalg.svd(w.double().cpu().reshape(geom.cout, -1), full_matrices=False)
        root = s[:r].sqrt()
        if not isinstance(layer, nn.Conv2d):
            first: nn.Conv2d | nn.Linear = nn.Linear(geom.cin, r, bias=False)
            second: nn.Conv2d | nn.Linear = nn.Linear(r, geom.cout, bias=bias is not None)
        else:
            first = conv_like(layer, geom.cin, r, (geom.kh, geom.kw), "hw", False)
            second = conv_like(layer, r, geom.cout, (1, 1), "", bias is not None)
        return nn.Sequential(loaded(first, w, root[:, None] * vh[:r]), loaded(second, w, u[:, :r] * root, bias))
