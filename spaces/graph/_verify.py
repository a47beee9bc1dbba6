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
   attentions (a constant of the cost model, see :mod:`spaces.graph._attention`)
   must not change when the half-pruned model is built; groups that change
   them are excluded. The pruned model's parameter count must equal the cost
   model's.
4. Every other plan dimension's probe plan
   (:meth:`spaces.dimensions.Dimension.verify_probe`, on top of the half-pruned
   plan) must build a model whose parameter count and bytes equal the cost
   model's; a dimension that gets a layer wrong refuses the model.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from spaces._errors import UnsupportedModelError
from spaces._plan import Plan
from spaces.cost._cost import measure_cost, parameter_bytes
from spaces.cost._costmodel import CostModel
from spaces.dimensions import dimensions
from spaces.graph._attention import functional_macs
from spaces.graph._surgery import Surgery
from spaces.graph._trace import Item, Trace, describe
from spaces.policy._importance import ImportanceScores

__all__ = ["SharedTensorWritten", "pruned_copy", "scrambled", "shared_copy", "untouched", "verify"]

_CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


class SharedTensorWritten(RuntimeError):
    """The self-check's surgery or forward wrote into a tensor it shares with the model it copied (a bug)."""


class _NotPlain(Exception):
    """A module refers to a module outside its children (a bound-method hook, a module attribute)."""


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its parameters and buffers (no tensor is copied).

    Each module is a new object with its own attribute dicts (parameters,
    buffers, children, hooks) and lists, holding the same tensors and other
    values; a submodule used twice is copied once. Surgery never writes a
    tensor in place: pruning and factorizing assign new parameters to the
    copy's modules, so the original keeps its own. Use it inside
    :func:`untouched`, which fails if that ever stops being true.

    A model whose modules refer to modules other than through their children
    (a hook that is a bound method of a module, a module kept in an attribute
    or a list) is copied by ``copy.deepcopy`` instead (tensors still shared),
    which points those references at the copies, as :meth:`ModelSpace.apply`'s
    deep copy does; so does a TorchScript module. The plain copy is about five
    times faster, and the self-check makes dozens of copies.
    """
    if not any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        with contextlib.suppress(_NotPlain):
            return _plain_copy(model)
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update((id(t), t) for t in model.buffers())
    return copy.deepcopy(model, memo)


def _refers_to_module(value: object) -> bool:
    if isinstance(value, nn.Module) or isinstance(getattr(value, "__self__", None), nn.Module):
        return True
    if isinstance(value, functools.partial):
        return any(_refers_to_module(v) for v in (*value.args, *value.keywords.values()))
    if isinstance(value, dict):
        return any(_refers_to_module(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_refers_to_module(v) for v in value)
    return False


def _plain_copy(model: nn.Module) -> nn.Module:
    copies: dict[int, nn.Module] = {}

    def copy_module(module: nn.Module) -> nn.Module:
        if id(module) in copies:
            return copies[id(module)]
        new = copies[id(module)] = object.__new__(type(module))
        state = dict(module.__dict__)
        for key, value in state.items():
            if key == "_modules":
                state[key] = type(value)((n, None if c is None else copy_module(c)) for n, c in value.items())
            elif key in ("_parameters", "_buffers"):
                state[key] = value.copy()
            elif _refers_to_module(value):
                raise _NotPlain(key)
            elif isinstance(value, (dict, list, set)):
                state[key] = value.copy()  # OrderedDict.copy() is an OrderedDict
        new.__dict__.update(state)
        return new

    return copy_module(model)


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Raise :class:`SharedTensorWritten` if the block writes into any of ``model``'s parameters or buffers.

    A write in place shows in a tensor's version counter, an assignment to a
    shared parameter's ``.data`` in its data pointer. (A write through
    ``.data`` bumps neither: no surgery of this package does one.)
    """
    tensors = [*model.parameters(), *model.buffers()]
    before = [(t._version, t.data_ptr()) for t in tensors]
    yield
    after = [(t._version, t.data_ptr()) for t in tensors]
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    if changed:
        raise SharedTensorWritten(
            f"the self-check wrote into {changed} tensors of the model it copied (shared_copy assumes surgery "
            "assigns new tensors and forwards write none): a bug in a plan dimension's apply"
        )


@torch.no_grad()
def scrambled(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with well-scaled random weights (seeded), so that every channel matters."""
    gen = torch.Generator().manual_seed(0)
    # fresh float CPU parameters are filled in place (half the memory traffic of copying, then overwriting);
    # any other parameter is deep-copied and overwritten as before
    memo: dict[int, object] = {
        id(p): nn.Parameter(torch.empty_like(p), p.requires_grad)
        for p in model.parameters()
        if type(p) is nn.Parameter and p.is_floating_point() and p.device.type == "cpu"
    }
    model = copy.deepcopy(model, memo)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            _fill(p, "normal", math.sqrt(2.0 / max(p[0].numel(), 1)), gen)  # He: fan-in p[0].numel()
        elif name.endswith("weight"):
            _fill(p, "uniform", 0.5, gen)
        else:
            _fill(p, "normal", 0.1, gen)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            _fill(m.running_mean, "normal", 0.1, gen)
            if m.running_var is not None:
                _fill(m.running_var, "uniform", 0.5, gen)
    return model


def _fill(t: torch.Tensor, kind: str, scale: float, gen: torch.Generator) -> None:
    """``normal``: N(0, scale²); ``uniform``: U(1 - scale, 1 + scale); in place on float CPU tensors."""
    if t.is_floating_point() and t.device.type == "cpu":
        if kind == "normal":
            t.normal_(0.0, scale, generator=gen)
        else:
            t.uniform_(1.0 - scale, 1.0 + scale, generator=gen)
        return
    values = torch.randn(t.shape, generator=gen) * scale if kind == "normal" else torch.rand(t.shape, generator=gen)
    t.copy_(values if kind == "normal" else 1.0 - scale + 2 * scale * values)


def pruned_copy(surgery: Surgery, model: nn.Module, plan: Plan, *, done: Plan | None = None) -> nn.Module:
    """``plan`` applied to a :func:`shared_copy` of ``model``; ``model`` itself is left as it was (checked).

    ``done``: ``model`` was built by that plan already (see :meth:`Surgery.apply`).
    """
    with untouched(model):
        return surgery.apply(shared_copy(model), plan, done=done)


class _Checker:
    def __init__(self, trace: Trace, costs: CostModel, surgery: Surgery) -> None:
        self.trace, self.costs, self.surgery = trace, costs, surgery
        self.vmodel = scrambled(trace.model)
        self.last: tuple[Plan, nn.Module] | None = None  # the last plan checked and its pruned model
        self.out: Any = None  # and that model's output
        with torch.no_grad():
            self.vbase = self.vmodel(*trace.example_inputs)

    def _maskable(self, items: list[Item]) -> bool:
        model = self.trace.model
        return not any(
            isinstance(model.get_submodule(it.target), _CHANNEL_MIXING_NORMS) for it in items if not it.is_param
        )

    def _masked(self, plan: Plan) -> torch.Tensor:
        """The scrambled model's output with ``plan``'s channels zeroed (in place, then restored: no copy)."""
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            return self.surgery.mask(self.vmodel, plan, saved=saved)(*self.trace.example_inputs)
        finally:
            with torch.no_grad():  # copied back in place (load_state_dict would run modules' own loading hooks)
                for tensor, values in saved.values():
                    tensor.copy_(values)

    def runs(self, plan: Plan) -> str | None:
        """None if the scrambled copy pruned by ``plan`` runs and keeps its output shape, else the reason."""
        try:
            with torch.no_grad(), untouched(self.vmodel):  # the forward too: the pruned copy shares its tensors
                pruned = pruned_copy(self.surgery, self.vmodel, plan)
                self.last = (plan, pruned)
                self.out = pruned(*self.trace.example_inputs)
        except SharedTensorWritten:
            raise  # a bug, not a failing group: the scrambled model may be changed
        except Exception as exc:
            return f"the pruned model fails: {describe(exc)}"
        out = self.out
        if not isinstance(out, torch.Tensor) or out.shape != self.vbase.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return f"pruning changes the output shape to {shape}"
        return None

    def check(self, plan: Plan) -> str | None:
        """None if ``plan`` prunes the scrambled copy correctly (it runs, and computes what masking does), else why."""
        inputs, vmodel, vbase = self.trace.example_inputs, self.vmodel, self.vbase
        reason = self.runs(plan)
        if reason is not None:
            return reason
        out = self.out
        masked_ids = {g for g in plan.prune if self._maskable(self.trace.items[self.costs.group_index(g)])}
        if masked_ids:
            sub = Plan({g: r for g, r in plan.prune.items() if g in masked_ids}, plan.importance, plan.round_to)
            with torch.no_grad():
                if sub != plan:
                    with untouched(vmodel):
                        out = pruned_copy(self.surgery, vmodel, sub)(*inputs)
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
    half = _half(trace)
    if checker.check(half) is not None:
        half = _exclude_failing(trace, costs, scores, checker)
    half = _check_products(trace, costs, scores, surgery, half)
    built = checker.last[1] if checker.last and checker.last[0] == half else None  # the same structure: reused
    built = built or pruned_copy(surgery, trace.model, half)
    got = sum(p.numel() for p in built.parameters())
    want = costs.cost(half).params
    if got != want:
        raise UnsupportedModelError(
            f"the pruned model has {got} parameters, the cost model predicts {want}; "
            "a layer type changes shape in a way the space does not model"
        )
    _check_dimensions(costs, surgery, half, built)


def _half(trace: Trace) -> Plan:
    return Plan({g.id: 0.5 for g in trace.groups if g.channels > 1}, _CHECKED_WITH)


def _exclude_failing(trace: Trace, costs: CostModel, scores: ImportanceScores, checker: _Checker) -> Plan:
    """Exclude the groups that fail alone; refuse the model if the rest still fails together.

    The groups whose pruned model does not run (or changes the output shape)
    are found first, with cheap checks that build no masked reference; then,
    if what is left still fails, those that compute wrongly, with full checks
    (also when no group fails to run alone: one that computes wrongly alone
    may be what breaks the run together). Returns the half-pruned plan of the
    groups left, checked whole.
    """
    together = UnsupportedModelError("pruning all groups together fails although each group alone works")
    dropped = False
    for check in (checker.runs, checker.check):
        half, dropped = _half(trace), False
        if check(half) is None:
            continue
        bad = _failing(check, list(half.prune))
        if not bad and check is checker.runs:
            continue
        if not bad:
            raise together
        trace.drop(bad)
        scores.clear()
        costs.rebuild()
        dropped = True
    half = _half(trace)
    if dropped and checker.check(half) is not None:  # what the full checks left, checked whole
        raise together
    return half


def _failing(check: Callable[[Plan], str | None], ids: list[str]) -> dict[str, str]:
    """The groups of ``ids`` (which fail ``check`` together) that fail alone, with their reasons, by bisection.

    A half that passes holds no group failing alone, so when the first half
    passes the second is searched without checking it whole (a single failing
    group costs one or two checks per level: between ``log2(len(ids))`` and
    twice that, instead of ``len(ids)``). The caller re-checks what is left,
    so groups that fail only together still refuse the model.
    """
    if len(ids) == 1:
        reason = check(Plan({ids[0]: 0.5}, _CHECKED_WITH))
        return {} if reason is None else {ids[0]: reason}
    first, second = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    if len(first) > 1 and check(Plan(dict.fromkeys(first, 0.5), _CHECKED_WITH)) is None:
        return _failing(check, second)  # the failure is in the second half (or only in the whole)
    bad = _failing(check, first)
    if len(second) == 1 or check(Plan(dict.fromkeys(second, 0.5), _CHECKED_WITH)) is not None:
        bad.update(_failing(check, second))
    return bad


def _products_after(trace: Trace, surgery: Surgery, plan: Plan) -> int:
    with untouched(trace.model):
        return functional_macs(pruned_copy(surgery, trace.model, plan), trace.example_inputs, trace.heads)


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
    return _half(trace)


def _check_dimensions(costs: CostModel, surgery: Surgery, half: Plan, built: nn.Module) -> None:
    """Each dimension's probe plan (on top of ``half``, which built ``built``) builds a model costed exactly."""
    for dim in dimensions():
        entries = dim.verify_probe(costs)
        if not entries:
            continue
        plan = half.replace(**entries)
        model = pruned_copy(surgery, built, plan, done=half)
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
