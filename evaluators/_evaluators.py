"""The evaluators: accuracy, BN recalibration, quick fine-tune with distillation, latency, pipelines."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluators._base import Context, Evaluator, Metrics, check_model_fits, seed_everything
from evaluators._data import _endless
from spaces import Status, check_interrupt, measure_latency

__all__ = [
    "Accuracy",
    "BNRecalibration",
    "FineTune",
    "Latency",
    "Pipeline",
    "default_evaluator",
    "evaluate_accuracy",
    "evaluate_samples",
]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, context: Context, *, split: str = "val") -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the validation data (``max_val_samples`` of it),
    or with ``split="test"`` on the whole test split (ValueError when the data has none)."""
    correct, losses = evaluate_samples(model, context, split=split)
    return float(correct.mean()), float(losses.mean())


def evaluate_samples(model: nn.Module, context: Context, *, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """Per image, in the split's order: whether the top-1 class is right (bool) and the cross-entropy (float32).

    What :func:`evaluate_accuracy` averages; kept per image so that two candidates scored on the same images
    can be compared by their paired differences (``storage.paired_difference``).
    """
    if split == "val":
        loader = context.data.val_loader(context.batch_size, context.max_val_samples)
    elif split == "test":
        loader = context.data.test_loader(context.batch_size)
    else:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    model.eval()
    correct, losses = [], []
    with torch.no_grad():
        for x, y in loader:
            check_interrupt()  # a safe point: between two evaluation batches
            x, y = x.to(context.device), y.to(context.device)
            with _autocast(context.device):
                out = model(_layout(x, context.device))
            out = out.float()
            losses.append(F.cross_entropy(out, y, reduction="none").cpu())
            correct.append((out.argmax(1) == y).cpu())
    return torch.cat(correct).numpy(), torch.cat(losses).numpy().astype(np.float32)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and x.dim() == 4 else x


def _prepare(model: nn.Module, context: Context) -> nn.Module:
    model.to(context.device)
    if context.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


@dataclass
class Accuracy(Evaluator):
    """Validation accuracy and loss."""

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        check_model_fits(model, context)
        _prepare(model, context)
        t = time.perf_counter()
        correct, losses = evaluate_samples(model, context)
        return Metrics(
            accuracy=float(correct.mean()),
            loss=float(losses.mean()),
            eval_seconds=time.perf_counter() - t,
            samples=(correct, losses),
        )


@dataclass
class BNRecalibration(Evaluator):
    """EagleEye's adaptive BN: reset running statistics, then ``batches`` training batches in
    train mode without gradients (cumulative averages). Models without BatchNorm are left as they are."""

    batches: int = 20

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        if self.batches < 1:
            raise ValueError(f"BNRecalibration.batches must be >= 1, got {self.batches}")
        check_model_fits(model, context)
        _prepare(model, context)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        t = time.perf_counter()
        if bns:
            saved = {m: m.momentum for m in bns}
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the batches
            model.train()
            loader = _endless(context.data.train_loader(context.batch_size, context.seed))
            with torch.no_grad():
                for _, (x, _y) in zip(range(self.batches), loader, strict=False):
                    with _autocast(context.device):
                        model(_layout(x.to(context.device), context.device))
            for m in bns:
                m.momentum = saved[m]
        model.eval()
        return Metrics(train_seconds=time.perf_counter() - t)


@dataclass
class FineTune(Evaluator):
    """A quick fine-tune: ``steps`` SGD/AdamW steps with a cosine learning rate, optionally
    distilled from ``context.teacher`` (KL at ``temperature`` with weight ``kd_weight``, the
    rest cross-entropy; ``context.steps``, when set, overrides ``steps``). Every
    ``eval_every`` steps the validation accuracy goes to ``context.callback``, which may
    stop the run (status PRUNED). A NaN or diverging loss ends the run with status FAIL.
    bf16 autocast and channels_last on CUDA."""

    steps: int = 100
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kd_weight: float = 0.0
    temperature: float = 4.0
    eval_every: int = 0  # 0: no intermediate evaluation
    diverge_factor: float = 20.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"FineTune.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.steps < 0:
            raise ValueError(f"FineTune.steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"FineTune.kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.temperature <= 0:
            raise ValueError(f"FineTune.temperature must be > 0, got {self.temperature}")

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=True
        )

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        check_model_fits(model, context)
        if self.kd_weight > 0 and context.teacher is None:
            raise ValueError("FineTune.kd_weight > 0 needs context.teacher (the original model)")
        _prepare(model, context)
        teacher = context.teacher if self.kd_weight > 0 else None
        if teacher is not None:
            _prepare(teacher, context).eval()
        seed_everything(context.seed)
        opt = self._optimizer(model)
        steps = self.steps if context.steps is None else context.steps
        total = max(steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        batches = itertools.islice(_endless(context.data.train_loader(context.batch_size, context.seed)), steps)
        metrics, t, eval_time = Metrics(), time.perf_counter(), 0.0
        first: list[float] = []

        def check(step: int, value: float) -> None:
            if not math.isfinite(value):
                raise _Stopped(f"loss became {value} at step {step}", step)
            first[:] = first or [value]  # the first loss: what divergence is measured against
            if value > self.diverge_factor * max(first[0], 1.0):
                raise _Stopped(f"loss diverged to {value:.3g} at step {step}", step)

        loss_of = functools.partial(self._loss, teacher=teacher)
        with _progress(context.progress and steps >= 200, steps, "fine-tune") as bar:
            try:
                for step in training_steps(model, batches, opt, sched, loss_of, context.device, check):
                    metrics.steps = step
                    bar(1)
                    if self.eval_every and step % self.eval_every == 0 and step < steps:
                        e0 = time.perf_counter()
                        halt = self._intermediate(model, context, metrics, step)
                        eval_time += time.perf_counter() - e0
                        if halt:
                            break
            except _Stopped as stop:
                return self._failed(metrics, stop.step, t, str(stop))
        model.eval()
        metrics.train_seconds = time.perf_counter() - t - eval_time
        metrics.eval_seconds = eval_time
        metrics.loss = None
        return metrics

    @staticmethod
    def _intermediate(model: nn.Module, context: Context, metrics: Metrics, step: int) -> bool:
        """The validation accuracy at ``step``, into the history and to the callback; True: stop (PRUNED)."""
        acc, _ = evaluate_accuracy(model, context)
        model.train()
        metrics.history.append((step, acc))
        if context.callback is not None and context.callback(step, acc) is False:
            metrics.status, metrics.reason = Status.PRUNED, f"stopped at step {step} (accuracy {acc:.4f})"
            return True
        return False

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher: nn.Module | None) -> torch.Tensor:
        """Cross-entropy, mixed with the teacher's softened outputs (KL divergence) when distilling."""
        out = model(x).float()
        loss = F.cross_entropy(out, y)
        if teacher is None:
            return loss
        with torch.no_grad():
            t_out = teacher(x).float()
        kd = F.kl_div(
            F.log_softmax(out / self.temperature, 1), F.softmax(t_out / self.temperature, 1), reduction="batchmean"
        ) * (self.temperature**2)
        return (1 - self.kd_weight) * loss + self.kd_weight * kd

    @staticmethod
    def _failed(metrics: Metrics, step: int, t: float, reason: str) -> Metrics:
        metrics.status, metrics.reason, metrics.steps = Status.FAIL, reason, step - 1
        metrics.train_seconds = time.perf_counter() - t
        return metrics


class _Stopped(Exception):
    """A training step's loss was not usable (NaN, diverged): stop before that step's update."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(reason)
        self.step = step


def training_steps(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    check: Callable[[int, float], None],
) -> Iterator[int]:
    """The one training loop (baseline training and fine-tunes): per batch, yield the step after its update.

    Each step: a safe point for interrupts, the batch moved to ``device``, the
    loss computed under autocast, ``check(step, loss)`` (which raises to stop
    before that step's update: a NaN or diverging loss), then the update and
    the scheduler's step.
    """
    model.train()
    for step, (x, y) in enumerate(batches, start=1):
        check_interrupt()  # a safe point: between two training steps
        x, y = _layout(x.to(device), device), y.to(device)
        with _autocast(device):
            loss = loss_of(model, x, y)
        check(step, loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        yield step


@contextlib.contextmanager
def _progress(enabled: bool, total: int, desc: str) -> Iterator[Callable[[int], object]]:
    from tqdm.auto import tqdm

    if not enabled:
        yield lambda n: None
        return
    with tqdm(total=total, desc=desc, leave=False) as bar:
        yield bar.update


@dataclass
class Latency(Evaluator):
    """Median wall time per batch over ``runs`` timed runs after ``warmup`` runs, for each batch
    size, in inference mode with ``threads`` CPU threads, on the context's device, in ``runtime``
    (``"torch"``, or ``"onnxruntime"``: the model exported first, see :func:`spaces.measure_latency`)."""

    batch_sizes: Sequence[int] = (1,)
    runs: int = 20
    warmup: int = 5
    threads: int | None = None
    runtime: str = "torch"

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        if self.runs < 1 or self.warmup < 0 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(
                f"Latency needs runs >= 1, warmup >= 0 and batch sizes >= 1, got runs={self.runs}, "
                f"warmup={self.warmup}, batch_sizes={list(self.batch_sizes)}"
            )
        _prepare(model, context)
        model.eval()
        old_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        out: dict[int, float] = {}
        try:
            device = torch.device("cpu") if self.runtime == "onnxruntime" else context.device  # its CPU provider
            if device != context.device:  # exported from a CPU copy: the model the next steps see stays where it is
                model = copy.deepcopy(model).to(device)
            for bs in self.batch_sizes:  # the timing loop is the device profile's (one way to time, everywhere)
                x = _layout(context.data.example_inputs(bs).to(device), device)
                timed = measure_latency(
                    model, x, device=device, runs=self.runs, warmup=self.warmup, runtime=self.runtime
                )
                out[int(bs)] = timed["measured_ms"]
        finally:
            torch.set_num_threads(old_threads)
        return Metrics(latency_ms=out, eval_seconds=time.perf_counter() - t0)


@dataclass
class Pipeline(Evaluator):
    """Run evaluators in order on the same model, merging their Metrics; stop at the first
    that does not complete (FAIL or PRUNED)."""

    steps: Sequence[Evaluator]

    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        metrics = Metrics()
        for step in self.steps:
            metrics = metrics.merge(step.evaluate(model, context))
            if metrics.status != Status.COMPLETE:
                break
        return metrics


def default_evaluator(
    *, bn_batches: int = 20, finetune_steps: int = 100, kd_weight: float = 0.0, eval_every: int = 25
) -> Pipeline:
    """The search's default candidate score: BN recalibration, a 100-step fine-tune, accuracy.

    Chosen by ``bench/bench_proxies.py`` (README): against a 1,000-step fine-tune, over
    12 random 50 %-MAC plans of a digits ResNet-20, Spearman 0.67 at 2.1 s per candidate,
    vs 0.53 for BN recalibration alone (0.17 s) and 0.31 for no fine-tune at all.
    """
    return Pipeline(
        [
            BNRecalibration(bn_batches),
            FineTune(steps=finetune_steps, kd_weight=kd_weight, eval_every=eval_every),
            Accuracy(),
        ]
    )
