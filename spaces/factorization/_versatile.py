"""``versatile`` and ``versatile_ch``: versatile filters (Wang et al., "Learning Versatile Filters for
Efficient Convolutional Neural Networks", NeurIPS 2018).

A layer keeps ``p`` *primary* filters; every output channel is a *secondary*
filter cut from one primary:

* **spatial** (both methods): ring ``i`` keeps the centred ``(k_h - 2i) x
  (k_w - 2i)`` part of its primary (a 3x3 primary gives a 3x3 and a 1x1
  filter; a 5x5 one 5x5, 3x3 and 1x1), applied at the layer's stride and
  dilation with its padding reduced by ``i * dilation`` (the input is cropped
  where that padding would be negative), so it produces the same positions;
* **channel** (``versatile_ch`` only, where the rings alone cannot give every
  output from ``p`` primaries, ``p * rings < C_out``): a primary covers
  ``c_hat = C_in - floor(C_in / 4)`` of the ``C_in`` input channels and is
  applied to two windows of them, channels ``[0, c_hat)`` and ``[C_in - c_hat,
  C_in)`` (the paper's ``1..c-g`` and ``g+1..c`` with ``g = floor(C_in / 4)``:
  the windows overlap on half the channels); otherwise it is ``versatile``.

Ranks: ``(p,)``, full rank ``(C_out,)``: at ``p = C_out`` every output is its own
full primary, the original layer exactly (the paper's ``s = 1``). The paper's
factor ``s`` is ``C_out / p``: at most the number of rings (two for 3x3), times
two with the channel windows; ``p`` is never normalized below
``ceil(C_out / (rings * windows))``.

Outputs fill *slots* window-major — (window 0, ring 0), (window 0, ring 1), ...,
(window 1, ring 0), ... — ``p`` outputs per slot, the last slot partly, so the cost is
exact: ``MACs = positions * sum(slot outputs * c_hat * slot kernel area)``,
weight parameters ``p * c_hat * k_h * k_w`` (the bias stays one per output).
Each secondary is computed by its own convolution (the paper's sharing of the
secondaries' computation with the primary's is not used: the MACs counted are
the MACs run).

**Which output goes where, and the primaries' values** (the fit, documented
because the paper trains versatile layers from scratch): the primaries start as
the ``p`` output filters of largest norm; then, three times, every output is
assigned to one (slot, primary) pair — a minimum-cost assignment
(:func:`scipy.optimize.linear_sum_assignment`) of the squared reconstruction
error, with every slot but the last filled — and the primaries are refitted in
least squares given the assignment (each primary weight is the mean of the
original weights it stands for). The *kept share* the allocator values a rank
by is ``1 - |W - W_hat|^2 / |W|^2`` of that reconstruction.

Convolutions with a kernel of at least 3x3 only (``groups = 1``, as for every
factorization): a 1x1 layer has no ring to share and is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from spaces.factorization._base import FactorMethod

if TYPE_CHECKING:
    from torch import nn

    from spaces._lowrank import LayerGeom

__all__ = ["Versatile", "VersatileChannel", "VersatileFit", "fit_versatile"]

_FIT_ROUNDS = 3  # assignment + least-squares refits


def rings_of(kh: int, kw: int) -> int:
    """How many centred filters a ``kh x kw`` primary gives (itself included)."""
    return (min(kh, kw) + 1) // 2


def slot_counts(cout: int, p: int, rings: int, windows: int) -> list[tuple[int, int, int]]:
    """``(ring, window, outputs)`` per non-empty slot, filled window-major with ``p`` outputs per slot."""
    out, left = [], cout
    for window in range(windows):
        for ring in range(rings):
            if left > 0:
                out.append((ring, window, min(p, left)))
                left -= min(p, left)
    return out


class Versatile(FactorMethod):
    """Spatial versatile filters: ranks ``(p,)``, ``p`` primary filters."""

    name = "versatile"
    kept_label = "primary filters"
    channel = False

    def applies(self, geom: LayerGeom) -> bool:
        return geom.kind == "conv" and min(geom.kh, geom.kw) >= 3

    def full_ranks(self, geom: LayerGeom) -> tuple[int, ...]:
        return (geom.cout,)

    def c_hat(self, geom: LayerGeom, p: int) -> int:
        """The input channels a primary covers: all of them, unless the channel windows are needed."""
        window = geom.cin - geom.cin // 4
        return window if self.channel and p * rings_of(geom.kh, geom.kw) < geom.cout else geom.cin

    def normalize(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, ...]:
        windows = 2 if self.channel and geom.cin - geom.cin // 4 < geom.cin else 1
        least = -(-geom.cout // (rings_of(geom.kh, geom.kw) * windows))
        return (max(least, min(ranks[0], geom.cout)),)

    def factor_cost(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        p = ranks[0]
        c_hat = self.c_hat(geom, p)
        slots = slot_counts(geom.cout, p, rings_of(geom.kh, geom.kw), 1 if c_hat == geom.cin else 2)
        per_position = sum(n * c_hat * (geom.kh - 2 * ring) * (geom.kw - 2 * ring) for ring, _, n in slots)
        return geom.s_out * per_position, p * c_hat * geom.kh * geom.kw

    def factorize(self, layer: nn.Conv2d | nn.Linear, geom: LayerGeom, ranks: tuple[int, ...]) -> nn.Sequential:
        from torch import nn

        from spaces.factorization._versatile_conv import VersatileConv2d

        assert isinstance(layer, nn.Conv2d)  # applies() admits convolutions only
        fit = fit_versatile(layer.weight.detach().double().cpu().numpy(), ranks[0], self.c_hat(geom, ranks[0]))
        return nn.Sequential(VersatileConv2d.from_fit(layer, fit))

    def kept_units(self, geom: LayerGeom, ranks: tuple[int, ...]) -> tuple[int, int]:
        return ranks[0], geom.cout  # primary filters of the output filters

    def kept_share(self, weight: np.ndarray, geom: LayerGeom, ranks: tuple[int, ...]) -> float:
        fit = fit_versatile(weight, ranks[0], self.c_hat(geom, ranks[0]))
        total = float(np.square(weight).sum())
        return 1.0 - float(np.square(weight - fit.expanded()).sum()) / total if total > 0 else 1.0


class VersatileChannel(Versatile):
    """Spatial and, where the rings do not suffice, channel versatile filters: ranks ``(p,)``."""

    name = "versatile_ch"
    channel = True


class VersatileFit:
    """The primaries ``[p, c_hat, kh, kw]`` and, per output channel, its slot and primary."""

    def __init__(self, primaries: np.ndarray, cin: int, slots: list[tuple[int, int, int]], assign: np.ndarray):
        self.primaries = primaries
        self.cin = cin
        self.slots = slots  # (ring, window, outputs) per slot
        self.assign = assign  # [cout, 2]: slot index, primary index

    def window_start(self, window: int) -> int:
        return 0 if window == 0 else self.cin - self.primaries.shape[1]

    def expanded(self) -> np.ndarray:
        """The equivalent dense kernel ``[cout, cin, kh, kw]`` (every secondary placed in a zero filter)."""
        _, c_hat, kh, kw = self.primaries.shape
        out = np.zeros((len(self.assign), self.cin, kh, kw))
        for o, (k, j) in enumerate(self.assign):
            ring, window, _ = self.slots[k]
            c0 = self.window_start(window)
            out[o, c0 : c0 + c_hat, ring : kh - ring, ring : kw - ring] = self.primaries[
                j, :, ring : kh - ring, ring : kw - ring
            ]
        return out


def _pair_costs(w: np.ndarray, fit: VersatileFit) -> np.ndarray:
    """Squared reconstruction error of every output by every (slot, primary) pair: ``[cout, slots * p]``."""
    p, c_hat, kh, kw = fit.primaries.shape
    total = np.square(w).reshape(len(w), -1).sum(1)
    blocks = []
    for ring, window, _ in fit.slots:
        c0 = fit.window_start(window)
        a = w[:, c0 : c0 + c_hat, ring : kh - ring, ring : kw - ring].reshape(len(w), -1)
        b = fit.primaries[:, :, ring : kh - ring, ring : kw - ring].reshape(p, -1)
        outside = total - np.square(a).sum(1)
        dist = np.square(a).sum(1)[:, None] + np.square(b).sum(1)[None, :] - 2.0 * a @ b.T
        blocks.append(outside[:, None] + np.maximum(dist, 0.0))
    return np.concatenate(blocks, axis=1)


def _assign(w: np.ndarray, fit: VersatileFit) -> np.ndarray:
    """Each output's (slot, primary): the minimum total error with every slot but the last filled."""
    from scipy.optimize import linear_sum_assignment

    p = fit.primaries.shape[0]
    costs = _pair_costs(w, fit)
    bonus = np.zeros(costs.shape[1])
    bonus[: p * (len(fit.slots) - 1)] = 1.0 + 2.0 * float(costs.max(initial=0.0)) * len(w)  # full slots first
    rows, cols = linear_sum_assignment(costs - bonus[None, :])
    assign = np.zeros((len(w), 2), dtype=np.int64)
    assign[rows, 0], assign[rows, 1] = cols // p, cols % p
    return assign


def _refit(w: np.ndarray, fit: VersatileFit) -> np.ndarray:
    """Least-squares primaries given the assignment: each weight the mean of the originals it stands for."""
    _, c_hat, kh, kw = fit.primaries.shape
    sums, counts = np.zeros_like(fit.primaries), np.zeros_like(fit.primaries)
    for o, (k, j) in enumerate(fit.assign):
        ring, window, _ = fit.slots[k]
        c0 = fit.window_start(window)
        sums[j, :, ring : kh - ring, ring : kw - ring] += w[o, c0 : c0 + c_hat, ring : kh - ring, ring : kw - ring]
        counts[j, :, ring : kh - ring, ring : kw - ring] += 1.0
    return np.where(counts > 0, sums / np.maximum(counts, 1.0), fit.primaries)


def fit_versatile(weight: Any, p: int, c_hat: int) -> VersatileFit:
    """Primaries and assignment reconstructing ``weight`` (``[cout, cin, kh, kw]``) with ``p`` primaries of
    ``c_hat`` channels (see the module docs); ``p`` and ``c_hat`` already normalized."""
    w = np.asarray(weight, dtype=np.float64)
    cout, cin, kh, kw = w.shape
    windows = 1 if c_hat == cin else 2
    slots = slot_counts(cout, p, rings_of(kh, kw), windows)
    norms = np.square(w).reshape(cout, -1).sum(1)
    first = np.argsort(-norms, kind="stable")[:p]
    fit = VersatileFit(w[first, :c_hat].copy(), cin, slots, np.zeros((cout, 2), dtype=np.int64))
    for _ in range(_FIT_ROUNDS):
        fit.assign = _assign(w, fit)
        fit.primaries = _refit(w, fit)
    return fit
