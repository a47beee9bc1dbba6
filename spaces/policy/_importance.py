"""Channel importance and singular-value energy, read from the space's (original) weights.

* :meth:`ImportanceScores.of` — per root channel of a group, by criterion:

  - ``"l1"`` / ``"l2"``: the summed L1 norm (squared L2) of its filters over the
    group's *producing* conv/linear layers (PruneTune's first criterion);
  - ``"bn_scale"``: the summed ``|gamma|`` of the group's BatchNorms (groups
    without BatchNorm fall back to ``"l1"``);
  - ``"group_l1"`` / ``"group_l2"``: torch-pruning's group magnitude
    (``GroupMagnitudeImportance``): the producers' filters, the *consumers'*
    input slices and the BatchNorm scales, averaged over the group's layers;
  - ``"lamp"``: torch-pruning's LAMP (group L2, each score divided by the sum of
    the scores not below it): the same order within a group as ``"group_l2"``,
    comparable across groups;
  - ``"taylor"`` / ``"hessian"``: torch-pruning's data-aware estimators
    (first-order Taylor ``|w * dL/dw|``; the OBD Hessian diagonal from
    per-sample squared gradients), over the same members as ``"group_l1"``.
    They need :meth:`ImportanceScores.calibrate` (calibration batches) or
    :meth:`ImportanceScores.load` (scores computed earlier) first.

  torch-pruning's estimators read a group as a list of ``(dependency, indices)``
  with root indices; :class:`_LibraryGroup` presents our traced members that
  way, with each member's pruning function mapped to torch-pruning's own
  function objects (its estimators compare them by identity, and a space
  shipped to another process carries copies).
* :meth:`ImportanceScores.order` — per group, root channels from most to least
  important (stable): pruning keeps a prefix of it (never "the first n").
* :meth:`ImportanceScores.energy` — the cumulative share of a layer's squared
  singular values (Eckart–Young: what a rank-``r`` SVD keeps);
  :meth:`ImportanceScores.kept` — what a method keeps at given ranks (its own
  reconstruction's share where it computes one).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from spaces._errors import PlanError
from spaces._lowrank import LayerGeom
from spaces.factorization import factor_method
from spaces.graph._attention import HeadPrunableAttention
from spaces.graph._trace import CONV, LINEAR, Item, Trace

__all__ = ["DATA_CRITERIA", "ImportanceScores"]


def _estimators() -> dict[str, Callable[[], Any]]:
    """torch-pruning's estimators by criterion (no normalizer where the order within a group is all we use)."""
    import torch_pruning as tp

    imp = tp.importance
    return {
        "group_l1": lambda: imp.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
        "group_l2": lambda: imp.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None),
        "lamp": lambda: imp.LAMPImportance(p=2, group_reduction="mean"),
        "taylor": lambda: imp.GroupTaylorImportance(group_reduction="mean", normalizer=None),
        "hessian": lambda: imp.GroupHessianImportance(group_reduction="mean", normalizer=None),
    }


DATA_CRITERIA = ("taylor", "hessian")  # they read gradients on calibration batches
_OURS = ("l1", "l2", "bn_scale")


class _Target(NamedTuple):
    module: nn.Module


class _Dep:
    """What torch-pruning's estimators read of a dependency: its layer and its pruning function."""

    def __init__(self, module: nn.Module, handler: Any) -> None:
        self.target = _Target(module)
        self.handler = handler

    @property
    def layer(self) -> nn.Module:
        return self.target.module

    @property
    def pruning_fn(self) -> Any:
        return self.handler


class _Member(NamedTuple):
    dep: _Dep
    idxs: list[int]
    root_idxs: list[int]


class _LibraryGroup:
    """A traced group as torch-pruning's estimators iterate it: ``(dependency, indices)`` with root indices.

    Members are sorted by index (the data-aware estimators sort ``idxs`` in place,
    which must not misalign them from ``root_idxs``).
    """

    def __init__(self, members: list[_Member]) -> None:
        self._members = members

    def __iter__(self) -> Iterator[tuple[_Dep, list[int]]]:
        return ((m.dep, m.idxs) for m in self._members)

    def __getitem__(self, k: int) -> _Member:
        return self._members[k]

    def __len__(self) -> int:
        return len(self._members)


def _library_function(handler: Any) -> Any:
    """torch-pruning's own function object for ``handler`` (a copy of it, in a space shipped to another process)."""
    import torch_pruning as tp

    if not isinstance(handler, types.MethodType):
        return handler
    return _library_functions(tp.pruner.function).get((type(handler.__self__), handler.__func__.__name__), handler)


@functools.cache
def _library_functions(module: types.ModuleType) -> dict[tuple[type, str], Any]:
    """torch-pruning's pruning functions by (pruner class, method name), read once."""
    fns = [fn for fn in vars(module).values() if isinstance(fn, types.MethodType)]
    return {(type(fn.__self__), fn.__func__.__name__): fn for fn in fns}


def _library_group(model: nn.Module, items: list[Item]) -> _LibraryGroup:
    import torch_pruning as tp

    members = []
    for it in items:
        if it.is_param:
            continue  # a bare parameter: torch-pruning's estimators skip it too
        pairs = sorted(zip(it.idxs.tolist(), it.root_idxs.tolist(), strict=True))
        module, handler = model.get_submodule(it.target), _library_function(it.handler)
        if isinstance(module, HeadPrunableAttention):  # its q/k/v rows, as the linear layer they are
            module, handler = _in_projection(module), tp.prune_linear_out_channels
        members.append(_Member(_Dep(module, handler), [a for a, _ in pairs], [b for _, b in pairs]))
    return _LibraryGroup(members)


def _row_norms(w: torch.Tensor, p: int) -> np.ndarray:
    """Per row of the 2-D ``w``, the sum of ``|w| ** p`` in float64, converted a block of rows at a time.

    Converting the whole of ``w`` to float64 first cost seconds on the largest
    layers (vgg's, ViT-L's): every space build ranks every group's channels.
    """
    rows = max(1, (1 << 20) // max(w.shape[1], 1))
    if p == 1:  # |w| is exact in w's own type; the sums run in float64
        sums = [c.abs().sum(1, dtype=torch.float64) for c in w.split(rows)]
    else:
        sums = [c.double().abs().pow(p).sum(1) for c in w.split(rows)]
    return torch.cat(sums).numpy() if sums else np.zeros(0)


def _in_projection(attn: HeadPrunableAttention) -> nn.Linear:
    """A linear layer sharing ``attn``'s packed q/k/v weight and bias (gradients included), for the estimators."""
    proxy = nn.Linear(attn.in_proj_weight.shape[1], attn.in_proj_weight.shape[0], bias=False, device="meta")
    proxy.weight = attn.in_proj_weight
    proxy.bias = attn.in_proj_bias
    return proxy


class ImportanceScores:
    """Scores over one trace; cached per criterion (call :meth:`clear` after the groups change)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._orders: dict[str, list[np.ndarray]] = {}
        self._energy: dict[str, np.ndarray] = {}
        self._kept: dict[str, float] = {}  # "layer|method|ranks" -> kept share (see kept())
        self._given: dict[str, dict[str, np.ndarray]] = {}  # data-aware criteria: group id -> scores

    def clear(self) -> None:
        self._orders.clear()

    def of(self, index: int, criterion: str) -> np.ndarray:
        """Importance of each root channel of group ``index`` (see the module docs)."""
        if criterion in _OURS:
            return self._ours(index, criterion)
        if criterion in DATA_CRITERIA:
            given = self._given.get(criterion)
            if given is None:
                raise PlanError(
                    f"importance {criterion!r} needs calibration batches first "
                    "(ModelSpace.calibrate_importance, or load_importance with scores computed earlier)"
                )
            return given[self.trace.groups[index].id]
        return self._library(index, _estimators()[criterion]())

    def _library(self, index: int, estimator: Any) -> np.ndarray:
        """torch-pruning's ``estimator`` on group ``index`` (zeros where it finds no layer it scores)."""
        group = _library_group(self.trace.model, self.trace.items[index])
        group_id = self.trace.groups[index].id
        scores = estimator(group)
        channels = self.trace.groups[index].channels
        if scores is None:
            return np.zeros(channels, dtype=np.float64)
        values = scores.detach().double().cpu().numpy()
        # torch-pruning sizes its result by the first member it scores and adds every member at the root
        # indices: a group whose root channel spans several indices (an attention head) is its first entries
        if len(values) != channels and not (len(values) > channels and not values[channels:].any()):
            raise PlanError(f"importance estimator gave {len(values)} scores for group {group_id!r} of {channels}")
        return values[:channels]

    @torch.no_grad()
    def _ours(self, index: int, criterion: str) -> np.ndarray:
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
            if isinstance(mod, HeadPrunableAttention):  # a head's q, k and v rows
                w = mod.in_proj_weight.detach()
            elif isinstance(mod, CONV + LINEAR):
                w = mod.weight.detach()
            else:
                continue
            if isinstance(mod, CONV) and mod.transposed:
                w = w.transpose(0, 1)
            norms = _row_norms(w.flatten(1), p)[it.idxs]
            np.add.at(scores, it.root_idxs, norms)
        return scores

    # ------------------------------------------------------------ data-aware criteria
    def calibrate(self, criterion: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
        """Compute data-aware ``criterion`` (``"taylor"`` or ``"hessian"``) on ``(inputs, labels)`` batches.

        The cross-entropy loss is back-propagated through the space's model in
        eval mode (BatchNorm statistics untouched); Taylor sums the batches'
        gradients, Hessian averages per-sample squared gradients (OBD's
        diagonal; torch-pruning's ``accumulate_grad`` keeps only the last
        sample, so the average is taken here and handed to its estimator as the
        gradient). The model's weights are unchanged and its gradients cleared
        afterwards. Returns the scores per group id (to cache; see :meth:`load`).
        """
        if criterion not in DATA_CRITERIA:
            raise ValueError(f"calibrate() is for {', '.join(DATA_CRITERIA)}, got {criterion!r}")
        model = self.trace.model
        params = list(model.parameters())
        wanted = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            _gradients(model, params, batches, squared=criterion == "hessian")
            estimator = _estimators()[criterion]()
            scores = {g.id: self._library(i, estimator) for i, g in enumerate(self.trace.groups)}
        finally:
            for p, w in zip(params, wanted, strict=True):
                p.grad = None
                p.requires_grad_(w)
        self.load(criterion, scores)
        return scores

    def load(self, criterion: str, scores: Mapping[str, np.ndarray]) -> None:
        """Use ``scores`` (per group id, as :meth:`calibrate` returned them) for data-aware ``criterion``."""
        if criterion not in DATA_CRITERIA:
            raise ValueError(f"load() is for {', '.join(DATA_CRITERIA)}, got {criterion!r}")
        for g in self.trace.groups:
            got = scores.get(g.id)
            if got is None or len(got) != g.channels:
                have = "missing" if got is None else f"{len(got)} scores"
                raise ValueError(f"importance scores for group {g.id!r} ({g.channels} channels): {have}")
        self._given[criterion] = {g.id: np.asarray(scores[g.id], dtype=np.float64) for g in self.trace.groups}
        self._orders.pop(criterion, None)

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

    def kept(self, layer: str, method: str, ranks: Iterable[int], geom: LayerGeom | None = None) -> np.ndarray:
        """The share of ``layer``'s kernel a factorization by ``method`` keeps at each int rank, made
        non-decreasing in the rank.

        The ranks are read on ``geom`` (the layer's pruned shape; default: unpruned).
        Where the method computes its own :meth:`~spaces.factorization.FactorMethod.kept_share`
        (versatile filters), it is that of the *unpruned* kernel at the same fraction of
        each full rank (the same compression: the pruned kernel is not built); else the
        cumulative share of squared singular values at the int rank (:meth:`energy`; for
        ``tucker2``/``tt`` a proxy).
        """
        base = self.trace.geoms[layer]
        at, fm = geom or base, factor_method(method)
        w: np.ndarray | None = None  # the kernel, read once when a share is first computed
        out = []
        for r in ranks:
            resolved = at.resolve(method, int(r))
            full, now = base.full_ranks(method), at.full_ranks(method)
            scaled = base.normalize(
                method, tuple(max(1, round(v * f / n)) for v, f, n in zip(resolved, full, now, strict=True))
            )
            key = f"{layer}|{method}|{scaled}"
            if key not in self._kept:
                if w is None:
                    w = self.trace.model.get_parameter(f"{layer}.weight").detach().double().cpu().numpy()
                share = fm.kept_share(w, base, scaled)
                self._kept[key] = float("nan") if share is None else share
            share = self._kept[key]
            if np.isnan(share):  # read off the spectrum at the int rank
                energy = self.energy(layer)
                share = float(energy[min(int(r), len(energy)) - 1])
            out.append(share)
        return np.maximum.accumulate(np.asarray(out, dtype=np.float64)) if out else np.zeros(0)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    out = model(x)
    logits = out[0] if isinstance(out, tuple | list) else out
    return nn.functional.cross_entropy(logits, y, reduction=reduction)


def _gradients(
    model: nn.Module, params: list[nn.Parameter], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, squared: bool
) -> None:
    """Leave in each ``.grad`` the summed loss gradient, or (``squared``) the mean per-sample squared gradient."""
    was = model.training
    model.eval()
    total = [torch.zeros_like(p) for p in params] if squared else []
    n = 0
    try:
        with torch.enable_grad():
            for x, y in batches:
                if not squared:
                    _loss(model, x, y).backward()
                    continue
                for xi, yi in zip(x, y, strict=True):
                    model.zero_grad(set_to_none=True)
                    _loss(model, xi[None], yi[None]).backward()
                    for t, p in zip(total, params, strict=True):
                        if p.grad is not None:
                            t += p.grad.pow(2)
                    n += 1
        if squared:
            for t, p in zip(total, params, strict=True):
                p.grad = t / max(n, 1)
    finally:
        model.train(was)
