"""The contract of a low-rank factorization method (``svd``, ``tucker2``, ``tt``, ...).

A method says, for a layer's geometry (:class:`spaces.LayerGeom`: output and
input channels, kernel, the positions it is applied at), whether it applies,
its full ranks (one per mode), what a factorization at given ranks costs, the
ranks it can really deliver (:meth:`FactorMethod.normalize`), and how to build
the factor chain from the layer's weights (:meth:`FactorMethod.factorize`,
ordinary layers, never a reconstructed kernel). :class:`spaces.LayerGeom`, the
rank dimension, the sampler and the allocator ask the registry
(:mod:`spaces.factorization._registry`) for a method by name instead of naming
one. Torch-free at import: :meth:`FactorMethod.factorize` imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["FactorMethod"]


class FactorMethod(ABC):
    """One factorization method; one shared instance per process, no per-layer state."""

    name: ClassVar[str]
    reads_inputs: ClassVar[bool] = False  # its factors depend on the layer's inputs (:meth:`factorize_with`'s gram)
    kept_label: ClassVar[str] = "rank"  # what the report's structure panel calls what a plan keeps of a layer

    @abstractmethod
    def applies(self, geom: LayerGeom) -> bool:
        """Whether this method can factorize a layer of this geometry."""

    @abstractmethod
    def full_ranks(self, geom: LayerGeom) -> tuple[int, ...]:
        """The largest useful rank of each mode (a fraction of a plan is a fraction of these)."""

    @abstractmethod
    def factor_cost(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        """(MACs, weight parameters) of the factor chain at ``ranks`` (bias not included)."""

    @abstractmethod
    def normalize(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """``ranks`` clamped to what the decomposition can deliver."""

    @abstractmethod
    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        """The factor chain replacing ``layer`` at (normalized) ``ranks``, on the layer's dtype and device."""

    def factorize_with(
        self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...], gram: torch.Tensor | None
    ) -> nn.Sequential:
        """The factor chain, given ``gram``: the Gram matrix ``X^T X`` of the layer's inputs over calibration data
        (``in x in``; ``None`` where none was read). A method that reads activations (activation-aware, e.g.
        ``whitened``) overrides this; the others ignore ``gram`` (the default: :meth:`factorize`)."""
        return self.factorize(layer, geom, ranks)

    def kept_units(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        """(kept, total) of what the report's structure panel shows for a layer factorized at ``ranks``: the
        summed ranks of every mode and their full values, by default."""
        return sum(ranks), sum(self.full_ranks(geom))

    def kept_share(self, weight: np.ndarray, geom: LayerGeom, ranks: tuple[int, ...]) -> float | None:
        """The share of ``weight``'s squared norm the factorization at ``ranks`` keeps, which the allocator
        values a rank by; ``None`` (the default) reads it off the kernel's singular values (what a rank-``r``
        SVD keeps), a method whose reconstruction is not a truncated spectrum computes its own."""
        return None
