"""Channel importance and singular-value energy, read from the space's (original) weights.

* :meth:`ImportanceScores.of` — per root channel of a group: the summed L1
  norm (``"l1"``) or squared L2 norm (``"l2"``) of its filters over the group's
  producing conv/linear layers, or the summed ``|gamma|`` of its BatchNorms
  (``"bn_scale"``; groups without BatchNorm fall back to L1).
* :meth:`ImportanceScores.order` — per group, root channels from most to least
  important (stable): pruning keeps a prefix of it (never "the first n").
* :meth:`ImportanceScores.energy` — the cumulative share of a layer's squared
  singular values (Eckart–Young: what a rank-``r`` SVD keeps).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spaces._trace import CONV, LINEAR, Trace

__all__ = ["ImportanceScores"]


class ImportanceScores:
    """Scores over one trace; cached per criterion (call :meth:`clear` after the groups change)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._orders: dict[str, list[np.ndarray]] = {}
        self._energy: dict[str, np.ndarray] = {}

    def clear(self) -> None:
        self._orders.clear()

    @torch.no_grad()
    def of(self, index: int, criterion: str) -> np.ndarray:
        """Importance of each root channel of group ``index`` (see the module docs)."""
        group, items = self.trace.groups[index], self.trace.items[index]
        model = self.trace.model
        scores = np.zeros(group.channels, dtype=np.float64)
        if criterion == "bn_scale":
            for it in items:
                if it.is_param or not it.is_out:
                    continue
                mod = model.get_submodule(it.target)
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
                    vals = mod.weight.detach().abs().double().numpy()[it.idxs]
                    np.add.at(scores, it.root_idxs, vals)
            if scores.any():
                return scores
        p = 2 if criterion == "l2" else 1
        for it in items:
            if it.is_param or not it.is_out:
                continue
            mod = model.get_submodule(it.target)
            if not isinstance(mod, CONV + LINEAR):
                continue
            w = mod.weight.detach().double()
            if isinstance(mod, CONV) and mod.transposed:
                w = w.transpose(0, 1)
            norms = w.flatten(1).abs().pow(p).sum(1).numpy()[it.idxs]
            np.add.at(scores, it.root_idxs, norms)
        return scores

    def order(self, criterion: str) -> list[np.ndarray]:
        """Per group, root channel indices from most to least important."""
        if criterion not in self._orders:
            self._orders[criterion] = [
                np.argsort(-self.of(i, criterion), kind="stable") for i in range(len(self.trace.groups))
            ]
        return self._orders[criterion]

    def energy(self, layer: str) -> np.ndarray:
        """Cumulative share of squared singular values of ``layer``'s (unpruned) kernel."""
        if layer not in self._energy:
            w = self.trace.model.get_parameter(f"{layer}.weight").detach().double()
            s2 = torch.linalg.svdvals(w.reshape(w.shape[0], -1)).pow(2).numpy()
            total = s2.sum()
            self._energy[layer] = np.cumsum(s2) / total if total > 0 else np.linspace(1 / len(s2), 1.0, len(s2))
        return self._energy[layer]
