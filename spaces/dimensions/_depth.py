"""Depth as a plan dimension: ``depth = {block: "shortcut"}`` replaces whole residual blocks by their shortcut.

A *droppable block* is a module, called once in the forward pass on one
tensor, that returns a tensor of the same shape and whose output reaches its
input through additions (and activations) alone: ``out = x + f(x)``, perhaps
behind a final ReLU, or ``x + f(x) + g(x + f(x))`` as in a transformer block.
That is torchvision's and timm's ResNet blocks without a downsampling
shortcut, MobileNetV2's inverted residuals with ``use_res_connect``, ViT's and
Swin's encoder blocks, and the zoo's ResNet-20 blocks: the autograd graph of
one forward pass with hooks finds them, whatever their class. Of nested
candidates (a stage made only of such blocks is one too) the innermost are
the blocks. Dropping a block replaces it by ``nn.Identity``: the model then
computes ``x`` where it computed ``x + f(x)`` (before a final ReLU whose input
was already non-negative, the same thing).

Exact cost: the dense cost of everything inside the block at the kept
channels (:meth:`spaces.CostModel.modules_state`) plus the products between
activations it made outside head-prunable attentions (measured once, per
block) leave the model. Depth is a :class:`~spaces.dimensions.Removing`
dimension ordered after pruning and before ranks and bits, so a rank or bits
of a layer inside a dropped block are void (not costed, not built), and the
latency model does not time the dropped layers. ``fit`` holds the blocks and
moves the pruning.

The sampler gets one parameter, ``depth:blocks``: how many of the droppable
blocks are dropped, up to ``max_share`` of them (``[space.depth]``). The
blocks go in the order of their influence on the example inputs
(``1 - cos(x, block(x))``, averaged over the batch; the smallest first), the
measure ShortGPT's "block influence" uses to drop layers.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from spaces._errors import InputTypeError, PlanError, first_line
from spaces.dimensions._base import AllocPoint, Block, CostState, Dimension, Entries, ParamSpec, StructureRow
from spaces.dimensions._roles import Allocated, Measured, Removing, Reported, Sampled, inside

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spaces._plan import Plan
    from spaces._space import ModelSpace
    from spaces.cost._costmodel import CostModel
    from spaces.graph._surgery import Surgery

__all__ = ["DepthDimension", "DepthOptions", "droppable_blocks"]

log = logging.getLogger("prunetune")
DROP = "shortcut"  # the one value a block takes in a plan: it becomes its shortcut
# autograd nodes a shortcut passes through on its way to the block's output (additions, pointwise activations)
_SHORTCUT_NODES = ("AddBackward0", "AddBackward1", "ReluBackward0", "ReluBackward1", "CloneBackward0")


class DepthOptions(BaseModel):
    """Depth: whole residual blocks dropped, each replaced by its shortcut. The table present turns it on."""

    model_config = ConfigDict(extra="forbid")
    max_share: float = Field(0.5, gt=0, le=1, description="the largest share of the droppable blocks one plan drops")


@dataclass(frozen=True)
class DroppableBlock:
    """One block a plan may drop: its name, the products it makes outside attentions, its influence."""

    name: str
    functional_macs: int
    influence: float


_found: weakref.WeakKeyDictionary[Any, dict[str, DroppableBlock]] = weakref.WeakKeyDictionary()


def droppable_blocks(costs: CostModel) -> dict[str, DroppableBlock]:
    """The blocks of the traced model a plan may drop, in module order (found once per model)."""
    model = costs.trace.model
    if model not in _found:
        try:
            _found[model] = _discover(costs)
        except Exception as exc:  # a forward pass with grad the model does not take: no block is droppable
            log.info("depth: no droppable block found (%s: %s)", type(exc).__name__, first_line(exc, ""))
            _found[model] = {}
    return _found[model]


def _discover(costs: CostModel) -> dict[str, DroppableBlock]:
    """One forward pass with grad and hooks: each module's calls, shapes, shortcut, products and influence."""
    import torch

    from spaces.graph._attention import counting_products

    model, tr = costs.trace.model, costs.trace
    seen: dict[str, list[Any]] = {}
    counter: list[Any] = []  # the products' counter, once the forward pass counts them
    hooks = []
    for name, mod in model.named_modules():
        if name and any(True for _ in mod.parameters()):
            hooks += _hooks(name, mod, seen, counter)
    inputs = tuple(
        x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in tr.example_inputs
    )
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), counting_products(model, tr.heads) as products:
            counter.append(products)
            model(*inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    found = {n: _block(n, rec) for n, rec in seen.items() if _is_candidate(rec, tr.ignored_layers, n)}
    names = [n for n in found if not any(o != n and o.startswith(n + ".") for o in found)]  # the innermost
    return {n: found[n] for n in sorted(names, key=lambda n: tr.order.get(n, 0))}


def _hooks(name: str, mod: nn.Module, seen: dict[str, list[Any]], counter: list[Any]) -> list[Any]:
    """A pre-hook and a hook recording, per call: the input, its autograd node, the products so far, the output."""
    import torch

    def before(_: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
        seen.setdefault(name, []).append([x, None if x is None else x.grad_fn, counter[0].macs, None, 0])

    def after(_: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        call = seen[name][-1]
        call[3], call[4] = out, counter[0].macs - call[2]

    return [mod.register_forward_pre_hook(before), mod.register_forward_hook(after)]


def _is_candidate(calls: list[Any], ignored: tuple[str, ...], name: str) -> bool:
    """Called once on one tensor, a tensor of the same shape out, reached from the input through additions."""
    import torch

    if len(calls) != 1 or any(i == name or i.startswith(name + ".") for i in ignored):
        return False
    x, node, _, out, _ = calls[0]
    if x is None or not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype:
        return False
    return node is not None and _reaches_through_add(out.grad_fn, node)


def _reaches_through_add(start: Any, target: Any) -> bool:
    """Whether autograd node ``target`` is reached from ``start`` through shortcut nodes, one addition at least."""
    stack, seen = [(start, False)], set()
    while stack:
        fn, added = stack.pop()
        if fn is None or (id(fn), added) in seen:
            continue
        seen.add((id(fn), added))
        if fn is target:
            if added:
                return True
            continue
        kind = type(fn).__name__
        if kind in _SHORTCUT_NODES:
            stack.extend((nxt, added or kind.startswith("Add")) for nxt, _ in fn.next_functions)
    return False


def _block(name: str, calls: list[Any]) -> DroppableBlock:
    import torch

    x, _, _, out, products = calls[0]
    with torch.no_grad():
        a, b = x.detach().flatten(1).double(), out.detach().flatten(1).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean()
    return DroppableBlock(name=name, functional_macs=int(products), influence=float(1.0 - cos))


class DepthDimension(Dimension, Removing, Sampled, Allocated, Measured, Reported):
    key = "depth"
    describe: ClassVar[dict[str, str]] = {"depth": 'block to "shortcut" (the block is replaced by its shortcut)'}
    order = 5  # after pruning (its cost is taken at the kept channels), before ranks and bits (void inside)
    options = DepthOptions

    def normalize(self, values: Entries) -> Entries:
        for block, value in values["depth"].items():
            if not isinstance(block, str):
                raise InputTypeError(f"depth keys must be block names (str), got {block!r}")
            if value != DROP:
                raise PlanError(f'depth of block {block!r} must be "{DROP}" (absent: the block is kept), got {value!r}')
        return {"depth": dict.fromkeys(values["depth"], DROP)}

    def resolve(self, costs: CostModel, plan: Plan, keep: np.ndarray) -> Any | None:
        """The dropped blocks, in module order, after checking that each is a droppable block of the model."""
        names = list(plan.entries("depth"))
        if not names:
            return None
        blocks = droppable_blocks(costs)
        for name in names:
            if name not in blocks:
                raise PlanError(_not_droppable(costs, name, blocks))
        return tuple(n for n in blocks if n in names)

    def removed(self, resolved: Any) -> tuple[str, ...]:
        return tuple(resolved)

    def add_cost(self, costs: CostModel, resolved: Any, keep: np.ndarray, state: CostState) -> None:
        gone = costs.modules_state(resolved, keep)
        blocks = droppable_blocks(costs)
        state.macs -= gone.macs + sum(blocks[n].functional_macs for n in resolved)
        state.params -= gone.params
        state.bytes -= gone.bytes

    def apply(self, surgery: Surgery, model: nn.Module, resolved: Any, keep: np.ndarray) -> None:
        from torch import nn

        for name in resolved:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Identity())

    def verify_probe(self, costs: CostModel) -> Entries:
        """The first and the last droppable block dropped."""
        blocks = list(droppable_blocks(costs))
        return {"depth": dict.fromkeys({blocks[0], blocks[-1]}, DROP)} if blocks else {}

    # ------------------------------------------------------------ the sampler
    def params(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """With ``[space.depth]``: how many blocks are dropped, up to ``max_share`` of the droppable ones."""
        opts = options.get(self.key)
        blocks = droppable_blocks(space.costs)
        if not isinstance(opts, DepthOptions) or not blocks:
            return {}
        most = math.floor(opts.max_share * len(blocks) + 1e-9)
        return {"blocks": ParamSpec(0.0, float(most), step=1.0)} if most else {}

    def from_params(self, space: ModelSpace, values: Mapping[str, float], options: Mapping[str, Any]) -> Entries:
        if "blocks" not in values:
            return {}
        return {"depth": dict.fromkeys(_drop_order(space.costs)[: round(float(values["blocks"]))], DROP)}

    def to_params(
        self, space: ModelSpace, plan: Plan, specs: Mapping[str, ParamSpec], options: Mapping[str, Any]
    ) -> dict[str, float]:
        if "blocks" not in specs:
            return {}
        return {"blocks": min(float(len(plan.entries("depth"))), specs["blocks"].high)}

    # ------------------------------------------------------------ the allocator
    def allocator_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """With ``[space.depth]``: ``depth=True`` (the allocator may drop blocks; the sensitivity measures each)."""
        return {"depth": True} if isinstance(options.get(self.key), DepthOptions) else {}

    def sensitivity_plans(self, space: ModelSpace, options: Mapping[str, Any]) -> dict[str, dict[str, Entries]]:
        """With ``options["depth"]``: each droppable block dropped alone."""
        if not options.get("depth"):
            return {}
        return {name: {DROP: {"depth": {name: DROP}}} for name in droppable_blocks(space.costs)}

    def allocator_blocks(self, space: ModelSpace, point: AllocPoint) -> list[Block]:
        """With ``options["depth"]``: per block, dropped, or one step that keeps it (its dense cost at the point).

        Under a latency limit the blocks are left as they are (the allocator meets one by pruning alone).
        """
        if not point.options.get("depth") or "latency" in point.metrics:
            return []
        dropped = set(point.resolved.get(self.key) or ())
        values = self._keep_values(space, point)
        out = []
        for name, block in droppable_blocks(space.costs).items():
            state = space.costs.modules_state((name,), point.keep)
            state.macs += block.functional_macs
            cost = point.vector(state.cost())
            out.append(
                Block(unit=name, values=[values[name]], costs=[cost], base_cost=0 * cost if name in dropped else -cost)
            )
        return out

    def _keep_values(self, space: ModelSpace, point: AllocPoint) -> dict[str, float]:
        """What keeping each block is worth: the measured loss rise of dropping it, else the groups inside it
        (each worth one when whole, the unit of the channel blocks' values)."""
        if "depth_values" in point.cache:
            return point.cache["depth_values"]
        sens = point.options.get("sensitivity")
        blocks = droppable_blocks(space.costs)
        rises = {n: sens.rises(self.key, n).get(DROP) for n in blocks} if sens is not None else {}
        if sens is not None and rises and all(r is not None for r in rises.values()):
            out = {n: max(float(r), 0.0) / sens.scale for n, r in rises.items()}
        else:
            out = {n: float(max(sum(all(inside(x, (n,)) for x in g.layers) for g in space.groups), 1)) for n in blocks}
        point.cache["depth_values"] = out
        return out

    def allocator_decode(self, space: ModelSpace, point: AllocPoint, choices: list[tuple[bool, int]]) -> None:
        if not choices:
            return
        dropped = tuple(n for n, (_, steps) in zip(droppable_blocks(space.costs), choices, strict=True) if not steps)
        point.resolved.pop(self.key, None)
        if dropped:
            point.resolved[self.key] = dropped

    def allocator_entries(self, space: ModelSpace, point: AllocPoint) -> Entries:
        dropped = point.resolved.get(self.key) or ()
        return {"depth": dict.fromkeys(dropped, DROP)} if dropped else {}

    # ------------------------------------------------------------ the report
    def summary(self, plan: Plan, limit: int) -> str | None:
        names = list(plan.entries("depth"))
        if not names:
            return None
        shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
        return f"{len(names)} block{'s' if len(names) != 1 else ''} dropped ({shown})"

    def structure_rows(self, space: ModelSpace, plan: Plan) -> list[StructureRow]:
        dropped = plan.entries("depth")
        if not dropped:
            return []
        return [StructureRow("kept blocks", n, 0 if n in dropped else 1, 1) for n in droppable_blocks(space.costs)]

    def export_notes(self, plan: Plan) -> dict[str, Any] | None:
        dropped = plan.entries("depth")
        if not dropped:
            return None
        return {"dropped_blocks": sorted(dropped), "replaced_by": "torch.nn.Identity (the block's shortcut)"}


def _drop_order(costs: CostModel) -> list[str]:
    """The blocks the sampler drops first: the smallest influence first (module order breaks ties)."""
    blocks = droppable_blocks(costs)
    return sorted(blocks, key=lambda n: (blocks[n].influence, list(blocks).index(n)))


def _not_droppable(costs: CostModel, name: str, blocks: Mapping[str, DroppableBlock]) -> str:
    """Why ``name`` cannot be dropped, in one line."""
    shown = ", ".join(list(blocks)[:6]) + (", ..." if len(blocks) > 6 else "")
    known = {n for n, _ in costs.trace.model.named_modules()}
    if name in known:
        why = "it is not a residual block whose input and output shapes match (or it is called more than once)"
        return f"module {name!r} cannot be dropped: {why}; droppable blocks: {shown or 'none'}"
    return f"unknown block {name!r}; droppable blocks: {shown or 'none'}"
