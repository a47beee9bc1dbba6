"""``tucker2``: tensorly's partial Tucker over the channel modes, ranks ``(r_in, r_out)``; convolutions only.

``1x1`` conv ``C_in -> r_in`` (at the input resolution), ``k x k`` conv
``r_in -> r_out`` (the layer's stride/padding), ``1x1`` conv ``r_out -> C_out``
with the bias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces.factorization._base import FactorMethod

if TYPE_CHECKING:
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["Tucker2"]


class Tucker2(FactorMethod):
    name = "tucker2"

    def applies(self, geom: LayerGeom) -> bool:
        return geom.kind == "conv"

    def full_ranks(self, geom: LayerGeom) -> tuple[int, ...]:
        return (geom.cin, geom.cout)

    def factor_cost(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        r1, r2 = ranks
        p1, p2, p3 = geom.cin * r1, r1 * r2 * geom.kh * geom.kw, r2 * geom.cout
        return geom.s_in * p1 + geom.s_out * (p2 + p3), p1 + p2 + p3

    def normalize(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, ...]:
        # HOOI's unfoldings: [C_in, r_out*k] and [C_out, r_in*k] bound each rank by the other
        k = geom.kh * geom.kw
        r_in = max(1, min(ranks[0], geom.cin, geom.cout * k))
        r_out = max(1, min(ranks[1], geom.cout, r_in * k))
        return (min(r_in, r_out * k), r_out)

    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        import tensorly as tl
        from tensorly.decomposition import partial_tucker
        from torch import nn

        from spaces._lowrank import conv_like, loaded

        tl.set_backend("numpy")
        assert isinstance(layer, nn.Conv2d)  # applies() admits convolutions only
        w = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        r_in, r_out = ranks
        arr = w.double().cpu().numpy()
        (core, (u_out, u_in)), _ = partial_tucker(arr, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=20)
        return nn.Sequential(
            loaded(conv_like(layer, geom.cin, r_in, (1, 1), "", False), w, u_in.T),
            loaded(conv_like(layer, r_in, r_out, (geom.kh, geom.kw), "hw", False), w, core),
            loaded(conv_like(layer, r_out, geom.cout, (1, 1), "", bias is not None), w, u_out, bias),
        )
