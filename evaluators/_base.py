"""The evaluator contract: ``Evaluator.evaluate(model, context) -> Metrics``."""

from __future__ import annotations

import abc
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluators._data import DataBundle
from spaces import Status, first_line

__all__ = ["COMPLETE", "FAIL", "PRUNED", "Context", "Evaluator", "Metrics", "resolve_device", "seed_everything"]

# aliases of the candidate statuses an evaluation ends with (spaces.Status is the vocabulary)
COMPLETE, FAIL, PRUNED = Status.COMPLETE, Status.FAIL, Status.PRUNED


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None``: CUDA when present, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {str(device)!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {str(device)!r}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but MPS is not available")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Metrics:
    """What an evaluation found. ``status`` is COMPLETE, FAIL (``reason`` says why) or PRUNED (stopped early)."""

    accuracy: float | None = None
    loss: float | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size -> median ms per batch
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    steps: int = 0
    status: Status = Status.COMPLETE
    reason: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, intermediate val accuracy)
    # per validation image, of the last accuracy step: right or not (bool), cross-entropy (float32)
    samples: tuple[Any, Any] | None = None
    # against the dense model on the teacher's pool (``evaluate.score = "kl"``): mean KL and its per-image values
    kl: float | None = None
    pool_kl: Any = None

    @property
    def ok(self) -> bool:
        return self.status == Status.COMPLETE

    def merge(self, other: Metrics) -> Metrics:
        """``other`` (a later step) on top of this one; times and steps add up."""
        return Metrics(
            accuracy=other.accuracy if other.accuracy is not None else self.accuracy,
            loss=other.loss if other.loss is not None else self.loss,
            latency_ms={**self.latency_ms, **other.latency_ms},
            train_seconds=self.train_seconds + other.train_seconds,
            eval_seconds=self.eval_seconds + other.eval_seconds,
            steps=self.steps + other.steps,
            status=other.status if other.status != Status.COMPLETE else self.status,
            reason=other.reason or self.reason,
            history=self.history + other.history,
            samples=other.samples if other.samples is not None else self.samples,
            kl=other.kl if other.kl is not None else self.kl,
            pool_kl=other.pool_kl if other.pool_kl is not None else self.pool_kl,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "latency_ms": dict(self.latency_ms),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "steps": self.steps,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class Context:
    """What an evaluation may use.

    ``teacher`` is the original model (for distillation); ``callback(step,
    accuracy)`` receives intermediate validation accuracies during fine-tuning
    and returns ``False`` to stop the candidate (its Metrics then say PRUNED).
    ``max_val_samples`` subsamples validation for quick scores (the test
    split, ``evaluate_accuracy(..., split="test")``, is always evaluated whole).
    ``resumed`` says the model continues an earlier evaluation's training (a
    promoted candidate's next rung): steps that prepare a model fresh from its
    plan (block-wise training) are skipped.
    """

    data: DataBundle
    teacher: nn.Module | None = None
    device: torch.device = field(default_factory=resolve_device)
    seed: int = 0
    batch_size: int = 128
    max_val_samples: int | None = None
    callback: Callable[[int, float], bool] | None = None
    progress: bool = False
    steps: int | None = None
    resumed: bool = False  # the model continues an earlier evaluation's training: one-time steps are skipped


class Evaluator(abc.ABC):
    """Scores a candidate model.

    Contract:

    * ``evaluate`` may change ``model`` in place (it is a candidate built for
      this evaluation: BN statistics, fine-tuned weights); callers that need the
      original pass a copy.
    * It is deterministic for ``context.seed`` on the CPU.
    * It never raises for a numerically failed run (NaN or diverging loss): it
      returns ``Metrics(status=FAIL, reason=...)``. Bad input (empty data, a
      model whose outputs do not match the data's classes) raises ``ValueError``
      before any work.
    """

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, context: Context) -> Metrics:
        raise NotImplementedError


def check_model_fits(model: nn.Module, context: Context) -> None:
    """One-line ValueError when the model's outputs don't match the data's classes."""
    model_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(context.data.example_inputs(2).to(model_device))
    except Exception as exc:
        first = first_line(exc)
        raise ValueError(
            f"the model does not accept inputs of shape {context.data.input_shape} from {context.data.spec!r}: {first}"
        ) from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != context.data.num_classes:
        raise ValueError(
            f"the model outputs shape {tuple(out.shape)} but {context.data.spec!r} has "
            f"{context.data.num_classes} classes: expected (batch, {context.data.num_classes})"
        )
