"""Surgery: apply a plan to a copy of the traced model (mechanism only; choosing plans is policy).

:meth:`Surgery.apply` applies each plan dimension (:mod:`spaces.dimensions`)
in its order, each resolved on the channels the pruning keeps. Pruning comes
first: :meth:`Surgery.remove_channels` keeps each group's most important
channels (the first ``keep`` of :meth:`ImportanceScores.order`) and removes, in
one torch-pruning call per (layer, pruning function) pair, the union of the
member indices every group asks of it — the pruned conv's outputs, the
matching BatchNorm entries and the next layers' input channels alike.
Factorized layers are then replaced by their factor chains
(:func:`spaces.factorize_layer`) on their pruned shape; a layer whose rank is
at or above its break-even rank is not factorized and stays exactly as it is.
:meth:`Surgery.mask` zeroes the same channels instead of removing them (the
reference the self-check compares with).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from spaces._plan import Plan
from spaces.cost._costmodel import CostModel
from spaces.graph._attention import convert
from spaces.graph._trace import Item, Trace
from spaces.policy._importance import ImportanceScores

__all__ = ["Surgery"]


def _same_entries(keys: tuple[str, ...], a: Plan, b: Plan) -> bool:
    return all(a.entries(k) == b.entries(k) for k in keys)


class Surgery:
    def __init__(self, trace: Trace, costs: CostModel, scores: ImportanceScores) -> None:
        self.trace, self.costs, self.scores = trace, costs, scores

    def removals(self, criterion: str, keep: np.ndarray) -> dict[tuple[str, Any], tuple[Item, np.ndarray]]:
        """Per (member, pruning function): the member indices removed when groups keep ``keep`` by ``criterion``."""
        orders = self.scores.order(criterion)
        todo: dict[tuple[str, Any], tuple[Item, np.ndarray]] = {}
        for group, items, order, k in zip(self.trace.groups, self.trace.items, orders, keep, strict=True):
            if k >= group.channels:
                continue
            removed = order[k:]
            for it in items:
                idx = it.idxs[np.isin(it.root_idxs, removed)]
                key = (it.target, it.handler)
                if key in todo:
                    idx = np.union1d(todo[key][1], idx)
                todo[key] = (it, idx)
        return todo

    def apply(self, model: nn.Module, plan: Plan, *, done: Plan | None = None) -> nn.Module:
        """Apply ``plan`` in place to ``model`` (a copy of the traced model): each dimension in its order.

        With ``done``, ``model`` is a copy of the model ``done`` built, and only
        the dimensions whose entries ``plan`` adds are applied (``done``'s
        others must equal ``plan``'s, or ``ValueError``): the self-check
        probes each dimension on top of one half-pruned model.
        """
        if done is not None and (done.importance, done.round_to) != (plan.importance, plan.round_to):
            raise ValueError("the applied plan ranks or rounds channels otherwise: apply the plan whole")
        keep = self.costs.keep_counts(plan)
        convert(model, self.trace.attentions)  # a copy of the user's model: its attentions as the trace has them
        applied = False
        for dim, part in self.costs.parts(plan, keep):
            if done is not None and _same_entries(dim.keys, done, plan):
                if applied and not all(done.entries(k) == {} for k in dim.keys):
                    raise ValueError(f"plan dimension {dim.key!r} applied before ones the plan adds: apply it whole")
                continue
            if done is not None and not all(done.entries(k) == {} for k in dim.keys):
                raise ValueError(f"plan dimension {dim.key!r} differs from the applied plan's: apply it whole")
            applied = True
            if part is not None:
                dim.apply(self, model, part, keep)
        return model

    def remove_channels(self, model: nn.Module, pruning: tuple[str, np.ndarray]) -> None:
        """Remove, in place, the channels each group does not keep (``pruning``: criterion, kept counts)."""
        for (name, handler), (it, idx) in self.removals(*pruning).items():
            idx_list = sorted(int(i) for i in np.unique(idx))
            if it.is_param:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, attr, handler(getattr(parent, attr), idx_list))
            else:
                handler(model.get_submodule(name), idx_list)

    @torch.no_grad()
    def mask(
        self, model: nn.Module, plan: Plan, *, saved: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> nn.Module:
        """Zero, in place, the channels ``plan`` would remove from ``model`` (ranks are ignored).

        With ``saved``, each tensor is recorded there (by id: the tensor and a
        copy of its values) before it is first written, so the caller can put
        the values back without copying the whole model.
        """
        keep = self.costs.keep_counts(plan)
        convert(model, self.trace.attentions)

        def zero(t: torch.Tensor, dim: int, index: torch.Tensor) -> None:
            if saved is not None and id(t) not in saved:
                saved[id(t)] = (t, t.detach().clone())
            t.index_fill_(dim, index, 0.0)

        for (name, _), (it, idx) in self.removals(plan.importance or self.costs.importance, keep).items():
            if not it.is_out or len(idx) == 0:
                continue
            index = torch.as_tensor(idx, dtype=torch.long)
            for pname, d in self.costs.param_dims(it):
                zero(model.get_parameter(pname), d, index)
            if not it.is_param:
                mod = model.get_submodule(name)
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                    zero(mod.running_mean, 0, index)
        return model
