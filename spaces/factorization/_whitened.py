"""``whitened``: activation-aware truncated SVD of a linear layer (SVD-LLM's truncation-aware whitening).

Plain SVD keeps the weights' largest singular directions, whatever inputs the
layer sees. The output error that matters is ``||(W - W_r) X^T||`` over the
inputs ``X`` the layer reads (rows: positions, columns: input features). With
the Gram matrix ``G = X^T X`` of calibration inputs and its Cholesky factor
``G = S S^T``, that error is ``||(W - W_r) S||``: so the SVD is taken of
``W S = U Σ V^T``, and the rank-``r`` factors are ``B = U_r Σ_r^½`` and
``A = Σ_r^½ V_r^T S^{-1}`` (``W_r = B A``). Each singular value dropped then
adds exactly its square to the error on the calibration inputs (Wang et al.,
SVD-LLM, 2024), which plain SVD guarantees only for whitened inputs.

The layer becomes ``Linear(in, r, bias=False)`` then ``Linear(r, out)`` carrying
the bias, as :mod:`spaces.factorization._svd` builds it, and costs the same.
Each pair of factors (row ``k`` of ``A``, column ``k`` of ``B``) is rescaled to
equal norms, which leaves ``B A`` as it is: ``S^{-1}`` can make ``A``'s rows far
larger than ``B``'s columns, and a recovery fine-tune (Adam moves every weight
by about its learning rate) then undid what the whitening gained. Measured on
the example's teacher, 2026-12-07: at a quarter of full rank on every
projection, 40 distilled recovery steps took unbalanced factors from a held-out
perplexity of 8.35 to 7.15 (plain SVD: 13.12 to 6.57), balanced ones to 6.55. A
small ridge (``1e-6`` of the Gram's mean diagonal) keeps ``S`` invertible where
an input feature never varied. Only ``nn.Linear`` layers, and only with a Gram
matrix: :meth:`Whitened.factorize` without one is a one-line
:class:`~spaces.PlanError` (language-model spaces read it on calibration text,
:meth:`spaces.decoder.DecoderSpace.calibrate_inputs`; vision spaces do not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces._errors import PlanError
from spaces.factorization._svd import SVD

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["Whitened"]

RIDGE = 1e-6  # of the Gram matrix's mean diagonal, added to it before the Cholesky factorization


class Whitened(SVD):
    name = "whitened"
    reads_inputs = True

    def applies(self, geom: LayerGeom) -> bool:
        """Never through a vision space's layers: they read no input statistics. A language-model space calls
        :meth:`factorize_with` with the Gram matrices it read (:mod:`spaces.decoder._choice`)."""
        return False

    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        raise PlanError(
            f"method 'whitened' on {geom.name!r} needs the Gram matrix of the layer's inputs, read on calibration "
            "data (language-model spaces read it; vision spaces do not yet): use 'svd' there"
        )

    def factorize_with(
        self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...], gram: torch.Tensor | None
    ) -> nn.Sequential:
        import torch
        from torch import nn

        from spaces._lowrank import loaded

        if not isinstance(layer, nn.Linear):
            raise PlanError(f"method 'whitened' on {geom.name!r}: nn.Linear layers only, got {type(layer).__name__}")
        if gram is None:
            return self.factorize(layer, geom, ranks)
        (r,) = ranks
        w = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        g = gram.double().cpu()
        g = g + RIDGE * g.diagonal().mean().clamp_min(1e-12) * torch.eye(g.shape[0], dtype=g.dtype)
        s = torch.linalg.cholesky(g)  # G = S S^T, S lower triangular
        u, sv, vh = torch.linalg.svd(w.double().cpu() @ s, full_matrices=False)
        root = sv[:r].sqrt()
        # A = Σ^½ V^T S^{-1}: solve A S = Σ^½ V^T, i.e. S^T A^T = (Σ^½ V^T)^T
        a = torch.linalg.solve_triangular(s.T, (root[:, None] * vh[:r]).T, upper=True).T
        b = u[:, :r] * root
        scale = (a.norm(dim=1) / b.norm(dim=0).clamp_min(1e-30)).clamp_min(1e-30).sqrt()  # balance each pair
        a, b = a / scale[:, None], b * scale
        first = nn.Linear(geom.cin, r, bias=False)
        second = nn.Linear(r, geom.cout, bias=bias is not None)
        return nn.Sequential(loaded(first, w, a), loaded(second, w, b, bias))
