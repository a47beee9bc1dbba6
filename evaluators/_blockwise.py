"""Sequential (block-wise) training: each changed block taught to reproduce the original block's outputs.

Tensor-train compression's phase 1 (Su et al. 2018, TTP): after the layers are
decomposed and before the end-to-end fine-tune, the compressed network is
trained block by block, in order, each block on the *compressed* network's own
input to it (the earlier blocks already trained) and against the *original*
block's output on the original network's input (MSE on the activations).
:class:`BlockwiseTraining` does this for any plan — factorized, versatile or
pruned layers — given the original model as ``context.teacher``.

**A block** is found by comparing the two models module by module (their
module names correspond: pruning keeps names, a factorized layer becomes a
module at the same name): a *changed* module is one whose class or parameter
shapes differ from the original's (the outermost such module: a factorized
layer's chain counts once); it is a block when its output has the original's
shape and it runs exactly once per forward in both models. So a factorized or
versatile layer is a block, and where pruning narrows a layer's output, the
layers that consume it and keep their own output are (taught to reproduce it
from fewer input channels, as channel-pruning reconstruction does); the pruned
layer itself has no block, and the end-to-end fine-tune trains it. Blocks are
trained in the order the original model runs them, on the arguments (keywords
included) the compressed model calls them with.

During this phase the models are in eval mode (BatchNorm statistics as the
preceding recalibration left them; its affine parameters train), and only the
current block's parameters get gradients.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaluators._base import Context, Evaluator, Metrics, check_model_fits, seed_everything
from evaluators._data import _endless
from evaluators._evaluators import _autocast, _layout, _prepare
from spaces import Status, check_interrupt

__all__ = ["BlockwiseTraining", "block_error", "changed_blocks"]


class _Reached(BaseException):
    """Raised by a hook to end a forward pass once the wanted activation is captured (a BaseException, so that
    model code catching ``Exception`` does not swallow it)."""


def _signature(module: nn.Module) -> tuple[Any, ...]:
    return (type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False)))


def _changed(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of modules whose class or own parameter shapes differ from the original's (or that it lacks)."""
    t_mods = dict(teacher.named_modules())
    out: list[str] = []
    for name, mod in student.named_modules():
        if name and (name not in t_mods or _signature(mod) != _signature(t_mods[name])):
            if not any(name.startswith(c + ".") for c in out):  # inside a changed module: already covered
                out.append(name)
    return out


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, list[tuple[int, ...]]], list[str]]:
    """Per module: the output shape of each call in one forward pass; and the modules in the order they finished."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    order: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name:

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                shapes.setdefault(name, []).append(tuple(out.shape) if isinstance(out, torch.Tensor) else ())
                order.append(name)

            hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()  # BatchNorm statistics are left as they are
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return shapes, order


@torch.no_grad()
def changed_blocks(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> list[str]:
    """The blocks (module names) :class:`BlockwiseTraining` trains, in the order the original runs them."""
    s_shapes, _ = _trace(student, x)
    t_shapes, order = _trace(teacher, x)
    blocks = set()
    for name in _changed(student, teacher):
        s, t = s_shapes.get(name, []), t_shapes.get(name, [])
        if len(s) == 1 and s == t and s[0] != ():
            blocks.add(name)
    return [name for name in dict.fromkeys(order) if name in blocks]


def _capture(model: nn.Module, x: torch.Tensor, name: str, what: str) -> Any:
    """The ``(args, kwargs)`` (``what="input"``) or the output of module ``name`` when ``model`` runs on ``x``."""
    seen: list[Any] = []
    mod = model.get_submodule(name)

    def pre(_m: nn.Module, args: Any, kwargs: Any) -> None:
        seen.append((args, kwargs))
        raise _Reached

    def post(_m: nn.Module, _i: Any, out: Any) -> None:
        seen.append(out)
        raise _Reached

    if what == "input":
        handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        handle = mod.register_forward_hook(post)
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return seen[0]


@contextlib.contextmanager
def _only_trains(model: nn.Module, block: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Gradients for ``block``'s parameters only (the flags are restored afterwards)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in block.parameters() if flags.get(p, True)]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def block_error(model: nn.Module, teacher: nn.Module, name: str, x: torch.Tensor) -> float:
    """MSE between block ``name``'s output in ``model`` (on ``model``'s own input to it) and in ``teacher``."""
    was = model.training, teacher.training
    model.eval()
    teacher.eval()
    try:
        args, kwargs = _capture(model, x, name, "input")
        with torch.no_grad():
            out = model.get_submodule(name)(*args, **kwargs)
        return float(F.mse_loss(out.float(), _capture(teacher, x, name, "output").float()))
    finally:
        model.train(was[0])
        teacher.train(was[1])


@dataclass
class BlockwiseTraining(Evaluator):
    """``steps`` Adam steps (learning rate ``lr``) per changed block, in order, each block taught to reproduce
    the original's (``context.teacher``) output on the compressed model's own input to it (see the module
    docs). It reports no fine-tune steps (the rungs count the end-to-end fine-tune's), only its time; a
    ``context.resumed`` model (trained block-wise before) is left as it is."""

    steps: int = 100
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"BlockwiseTraining.steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"BlockwiseTraining.lr must be > 0, got {self.lr}")

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        check_model_fits(model, context)
        if context.teacher is None:
            raise ValueError("BlockwiseTraining needs context.teacher (the original model)")
        if context.resumed or not self.steps:
            return Metrics()  # trained block-wise when it was fresh from its plan
        teacher = _prepare(context.teacher, context).eval()
        _prepare(model, context).eval()
        seed_everything(context.seed)
        t = time.perf_counter()
        batches = _endless(context.data.train_loader(context.batch_size, context.seed))
        first = _layout(next(batches)[0].to(context.device), context.device)
        for name in changed_blocks(model, teacher, first):
            reason = self._train_block(model, teacher, name, batches, context.device)
            if reason is not None:
                return Metrics(status=Status.FAIL, reason=reason, train_seconds=time.perf_counter() - t)
        model.eval()
        return Metrics(train_seconds=time.perf_counter() - t)

    def _train_block(
        self, model: nn.Module, teacher: nn.Module, name: str, batches: Iterator[Any], device: torch.device
    ) -> str | None:
        """Train block ``name``; a reason when its loss is not finite (the run then fails)."""
        block = model.get_submodule(name)
        with _only_trains(model, block) as params:
            if not params:
                return None
            opt = torch.optim.Adam(params, lr=self.lr)
            for step, (x, _y) in enumerate(itertools.islice(batches, self.steps), start=1):
                check_interrupt()  # a safe point: between two block-wise steps
                x = _layout(x.to(device), device)
                (args, kwargs), target = _capture(model, x, name, "input"), _capture(teacher, x, name, "output")
                with _autocast(device):
                    loss = F.mse_loss(block(*args, **kwargs).float(), target.float())
                if not math.isfinite(loss.item()):
                    return f"block-wise loss of {name!r} became {loss.item()} at step {step}"
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return None
