"""``tt``: a tensor-train of the kernel ordered ``(C_in, k_h, k_w, C_out)`` (TT-SVD; TTP, Su et al. 2018).

Ranks ``(r1, r2, r3)``, executed as four convolutions: ``1x1`` ``C_in -> r1``,
``k_h x 1`` ``r1 -> r2`` (vertical stride/padding/dilation), ``1 x k_w``
``r2 -> r3`` (horizontal), ``1x1`` ``r3 -> C_out`` with the bias. The
composition equals the convolution with the contracted kernel exactly.
Convolutions with ``k_h * k_w > 1`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces.factorization._base import FactorMethod

if TYPE_CHECKING:
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["TensorTrain"]


class TensorTrain(FactorMethod):
    name = "tt"

    def applies(self, geom: LayerGeom) -> bool:
        return geom.kind == "conv" and geom.kh * geom.kw > 1

    def full_ranks(self, geom: LayerGeom) -> tuple[int, ...]:
        k = geom.kh * geom.kw
        return (
            min(geom.cin, k * geom.cout),
            min(geom.cin * geom.kh, geom.kw * geom.cout),
            min(geom.cin * k, geom.cout),
        )

    def factor_cost(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        r1, r2, r3 = ranks
        p1, p2, p3, p4 = geom.cin * r1, r1 * r2 * geom.kh, r2 * r3 * geom.kw, r3 * geom.cout
        return geom.s_in * p1 + geom.s_mid * p2 + geom.s_out * (p3 + p4), p1 + p2 + p3 + p4

    def normalize(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, ...]:
        k = geom.kh * geom.kw
        r1 = max(1, min(ranks[0], geom.cin, k * geom.cout))
        r2 = max(1, min(ranks[1], r1 * geom.kh, geom.kw * geom.cout))
        return (r1, r2, max(1, min(ranks[2], r2 * geom.kw, geom.cout)))

    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        import tensorly as tl
        from tensorly.decomposition import tensor_train
        from torch import nn

        from spaces._lowrank import conv_like, loaded

        tl.set_backend("numpy")
        assert isinstance(layer, nn.Conv2d)  # applies() admits convolutions only
        w = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        r1, r2, r3 = ranks
        arr = w.double().cpu().numpy()
        g1, g2, g3, g4 = tensor_train(arr.transpose(1, 2, 3, 0), rank=[1, r1, r2, r3, 1]).factors
        return nn.Sequential(
            loaded(conv_like(layer, geom.cin, r1, (1, 1), "", False), w, g1[0].T),  # [r1, cin]
            loaded(conv_like(layer, r1, r2, (geom.kh, 1), "h", False), w, g2.transpose(2, 0, 1)),  # [r2, r1, kh]
            loaded(conv_like(layer, r2, r3, (1, geom.kw), "w", False), w, g3.transpose(2, 0, 1)),  # [r3, r2, kw]
            loaded(conv_like(layer, r3, geom.cout, (1, 1), "", bias is not None), w, g4[:, :, 0].T, bias),
        )
