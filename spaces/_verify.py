"""Self-verification: a space refuses what it would get wrong, so it never returns a wrong model.

:func:`verify` runs when a space is built (``verify=True``):

1. The base MACs measured by fvcore (attention and other products between
   activations included) must equal the analytic ones (layers called through
   ``F.linear``/``F.conv2d`` outside modules would be missed, so such a model
   is refused with :class:`~spaces.UnsupportedModelError`), and so must the
   parameter count.
2. *Masked equivalence*: on a copy with well-scaled random weights
   (:func:`scrambled`: an untrained model, or a trained one with dead units,
   could hide a wrong mapping behind outputs that ignore most channels), a
   half-pruned model must compute exactly what the original computes with the
   pruned channels zeroed. Groups with channel-mixing normalisation
   (LayerNorm/GroupNorm) are checked for shapes only. If pruning every group at
   once fails, the groups that fail alone are found by bisection and excluded
   from the space with their reason (``ModelSpace.excluded``); if the rest
   still fails together, the model is refused.
3. The MACs of the products between activations outside head-prunable
   attentions (a constant of the cost model, see :mod:`spaces._attention`)
   must not change when the half-pruned model is built; groups that change
   them are excluded. The pruned model's parameter count must equal the cost
   model's.
4. Every other plan dimension's probe plan
   (:meth:`spaces.dimensions.Dimension.verify_probe`, on top of the half-pruned
   plan) must build a model whose parameter count and bytes equal the cost
   model's; a dimension that gets a layer wrong refuses the model.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from spaces._attention import functional_macs
from spaces._cost import measure_cost, parameter_bytes
from spaces._costmodel import CostModel
from spaces._errors import UnsupportedModelError
from spaces._importance import ImportanceScores
from spaces._plan import Plan
from spaces._surgery import Surgery
from spaces._trace import Item, Trace, describe
from spaces.dimensions import dimensions

__all__ = ["scrambled", "verify"]

_CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def scrambled(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with well-scaled random weights (seeded), so that every channel matters."""
    gen = torch.Generator().manual_seed(0)
    model = copy.deepcopy(model)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / max(fan_in, 1)))
        elif name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            if m.running_var is not None:
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


class _Checker:
    def __init__(self, trace: Trace, costs: CostModel, surgery: Surgery) -> None:
        self.trace, self.costs, self.surgery = trace, costs, surgery
        self.vmodel = scrambled(trace.model)
        self.last: tuple[Plan, nn.Module] | None = None  # the last plan checked and its pruned model
        with torch.no_grad():
            self.vbase = self.vmodel(*trace.example_inputs)

    def _maskable(self, items: list[Item]) -> bool:
        model = self.trace.model
        return not any(
            isinstance(model.get_submodule(it.target), _CHANNEL_MIXING_NORMS) for it in items if not it.is_param
        )

    def _masked(self, plan: Plan) -> torch.Tensor:
        """The scrambled model's output with ``plan``'s channels zeroed (in place, then restored: no deep copy)."""
        state = self.vmodel.state_dict(keep_vars=True)  # the tensors themselves: masking fills them in place
        saved = {k: v.detach().clone() for k, v in state.items()}
        try:
            return self.surgery.mask(self.vmodel, plan)(*self.trace.example_inputs)
        finally:
            with torch.no_grad():  # copied back in place (load_state_dict would run modules' own loading hooks)
                for k, v in state.items():
                    v.copy_(saved[k])

    def check(self, plan: Plan) -> str | None:
        """None if ``plan`` prunes the scrambled copy correctly, else the reason."""
        inputs, vmodel, vbase = self.trace.example_inputs, self.vmodel, self.vbase
        try:
            with torch.no_grad():
                pruned = self.surgery.apply(copy.deepcopy(vmodel), plan)
                self.last = (plan, pruned)
                out = pruned(*inputs)
        except Exception as exc:
            return f"the pruned model fails: {describe(exc)}"
        if not isinstance(out, torch.Tensor) or out.shape != vbase.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return f"pruning changes the output shape to {shape}"
        masked_ids = {g for g in plan.prune if self._maskable(self.trace.items[self.costs.group_index(g)])}
        if masked_ids:
            sub = Plan({g: r for g, r in plan.prune.items() if g in masked_ids}, plan.importance, plan.round_to)
            with torch.no_grad():
                if sub != plan:
                    out = self.surgery.apply(copy.deepcopy(vmodel), sub)(*inputs)
                ref = self._masked(sub)
            # float noise is relative to the outputs; a wrong mapping errs on the
            # scale of the pruning's own effect (masked minus base)
            scale = float(ref.abs().max())
            effect = float((ref - vbase).abs().max())
            err = float((out - ref).abs().max())
            if not err <= 1e-5 * scale + 1e-3 * effect + 1e-30:
                return f"pruned channels are not the ones removed downstream (max error {err:.3g})"
        return None


_CHECKED_WITH = "l1"  # which channels go does not change whether they go correctly (data-aware criteria need data)


def verify(trace: Trace, costs: CostModel, scores: ImportanceScores, surgery: Surgery) -> None:
    """Check the space (see the module docs); exclude groups that fail, refuse a model that cannot work."""
    measured = measure_cost(trace.model, trace.example_inputs)
    base = costs.base_cost
    if measured.macs != base.macs:
        ops = ", ".join(sorted(measured.skipped_ops)) or "none"
        raise UnsupportedModelError(
            f"the model computes {measured.macs} MACs but its conv/linear modules and products account for "
            f"{base.macs}: some convolutions or products run where the space cannot see them "
            f"(e.g. F.conv2d on a module's weight); ops seen: {ops}"
        )
    if measured.params != base.params:
        raise UnsupportedModelError(f"parameter count {measured.params} differs from the traced {base.params}")
    if not trace.groups:
        return
    checker = _Checker(trace, costs, surgery)
    if not torch.isfinite(checker.vbase).all():
        raise UnsupportedModelError("the model's outputs are not finite on example_inputs with random weights")
    half = Plan({g.id: 0.5 for g in trace.groups if g.channels > 1}, _CHECKED_WITH)
    if checker.check(half) is not None:
        bad = _failing(checker, [g.id for g in trace.groups if g.channels > 1])
        if bad:
            trace.drop(bad)
            scores.clear()
            costs.rebuild()
            half = Plan({g.id: 0.5 for g in trace.groups if g.channels > 1}, _CHECKED_WITH)
        if not bad or checker.check(half) is not None:
            raise UnsupportedModelError("pruning all groups together fails although each group alone works")
    half = _check_products(trace, costs, scores, surgery, half)
    built = checker.last[1] if checker.last and checker.last[0] == half else None  # the same structure: reused
    built = built or surgery.apply(copy.deepcopy(trace.model), half)
    got = sum(p.numel() for p in built.parameters())
    want = costs.cost(half).params
    if got != want:
        raise UnsupportedModelError(
            f"the pruned model has {got} parameters, the cost model predicts {want}; "
            "a layer type changes shape in a way the space does not model"
        )
    _check_dimensions(trace, costs, surgery, half)


def _failing(checker: _Checker, ids: list[str]) -> dict[str, str]:
    """The groups of ``ids`` (which fail together) that fail alone, with their reasons, found by bisection.

    A half that passes holds no group failing alone (each failing group is
    found in about ``2 * log2(len(ids))`` checks instead of ``len(ids)``); the
    caller re-checks what is left, so groups that fail only together still
    refuse the model.
    """
    if len(ids) == 1:
        reason = checker.check(Plan({ids[0]: 0.5}, _CHECKED_WITH))
        return {} if reason is None else {ids[0]: reason}
    bad: dict[str, str] = {}
    for part in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):
        if len(part) == 1 or checker.check(Plan(dict.fromkeys(part, 0.5), _CHECKED_WITH)) is not None:
            bad.update(_failing(checker, part))
    return bad


def _products_after(trace: Trace, surgery: Surgery, plan: Plan) -> int:
    return functional_macs(surgery.apply(copy.deepcopy(trace.model), plan), trace.example_inputs, trace.heads)


def _check_products(trace: Trace, costs: CostModel, scores: ImportanceScores, surgery: Surgery, half: Plan) -> Plan:
    """Exclude the groups whose pruning changes the products outside head-prunable attentions (a constant cost)."""
    if not trace.functional_macs or _products_after(trace, surgery, half) == trace.functional_macs:
        return half
    bad = {
        g.id: "pruning it changes the width of a product between activations outside modules, "
        "whose cost the space does not model"
        for g in trace.groups
        if g.channels > 1 and _products_after(trace, surgery, Plan({g.id: 0.5}, _CHECKED_WITH)) != trace.functional_macs
    }
    trace.drop(bad)
    scores.clear()
    costs.rebuild()
    return Plan({g.id: 0.5 for g in trace.groups if g.channels > 1}, _CHECKED_WITH)


def _check_dimensions(trace: Trace, costs: CostModel, surgery: Surgery, half: Plan) -> None:
    """Each dimension's probe plan (on top of ``half``) builds a model whose parameters and bytes are costed exactly."""
    for dim in dimensions():
        entries = dim.verify_probe(costs)
        if not entries:
            continue
        plan = half.replace(**entries)
        model = surgery.apply(copy.deepcopy(trace.model), plan)
        got = (
            sum(p.numel() for p in model.parameters()),
            parameter_bytes(model),
        )
        cost = costs.cost(plan)
        if got != (cost.params, cost.bytes):
            raise UnsupportedModelError(
                f"plan dimension {dim.key!r} builds a model with {got[0]} parameters ({got[1]} bytes), "
                f"its cost model predicts {cost.params} ({cost.bytes} bytes) for {entries}"
            )
