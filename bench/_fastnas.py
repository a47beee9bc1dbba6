"""NVIDIA ModelOpt's FastNAS as a product team calls it, at a MAC budget: the peer of torch-pruning's one line.

``mtp.prune(model, mode="fastnas", constraints={"flops": ...}, dummy_input=..., config=...)``
converts the model into a search space of per-layer channel counts, measures
each choice's sensitivity (the score drop with that layer alone narrowed, BN
recalibrated on ``data_loader``), then searches the subnet that maximizes the
score within the constraint. Three settings make it a fair arm here:

* **Its score is validation accuracy** on ``max_val`` validation images, data the
  test split never sees (the studies select on the same split).
* **Its granularity is ours.** FastNAS's default rule keeps channel counts
  divisible by 32, which leaves a ResNet-20 (16 / 32 / 64 channels) three
  choices in one stage and no subnet under 80 % of its FLOPs; the arm uses a
  divisor of 4 for convolutions, batch norms and linear layers.
* **The budget is our measured MACs.** ModelOpt counts FLOPs with
  ``torchprofile`` (its own rules: batch norms ignored, ...), so its percentage is
  not ours; the constraint is bisected, as torch-pruning's ratio is, until our
  :func:`spaces.measure_cost` meets the limit. The sensitivity map is kept in a
  checkpoint, so each bisection step only searches again.

Needs ``pip install -e ".[peers]"`` (``nvidia-modelopt`` with ``torchprofile<0.1``:
0.1 dropped the ``profile.handlers`` table ModelOpt patches). It runs on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from spaces import measure_cost

__all__ = ["fastnas_at"]

_DIVISOR = 4


def _rules() -> list[tuple[str, dict[str, dict[str, dict[str, int]]]]]:
    conv = {"*": {"channel_divisor": _DIVISOR}}
    features = {"*": {"feature_divisor": _DIVISOR}}
    return [("fastnas", {"nn.Conv2d": conv, "nn.BatchNorm2d": features, "nn.Linear": features})]


def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / max(total, 1)


def _prune(
    base: nn.Module,
    example: torch.Tensor,
    percent: float,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val: list[tuple[torch.Tensor, torch.Tensor]],
    checkpoint: Path,
) -> nn.Module:
    import modelopt.torch.prune as mtp

    config = {
        "data_loader": train,
        "collect_func": lambda batch: batch[0],
        "max_iter_data_loader": 20,
        "score_func": lambda m: _accuracy(m, val),
        "checkpoint": str(checkpoint),
    }
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with quiet[0], quiet[1], warnings.catch_warnings():  # its tables and progress bars: the bench prints its own
        warnings.simplefilter("ignore")
        model, _ = mtp.prune(
            copy.deepcopy(base).cpu(), _rules(), {"flops": f"{percent:.3f}%"}, dummy_input=example, config=config
        )
    return model


def fastnas_at(
    base: nn.Module,
    example: torch.Tensor,
    macs_limit: float,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val: list[tuple[torch.Tensor, torch.Tensor]],
    workdir: Path,
) -> nn.Module:
    """FastNAS's subnet of ``base`` whose measured MACs meet ``macs_limit`` (the constraint bisected, 8 steps).

    ``train`` yields ``(images, labels)`` batches for its BN recalibration; ``val`` is the validation batches its
    score function (accuracy) is computed on; ``workdir`` keeps its sensitivity checkpoint.
    """
    checkpoint = workdir / "fastnas-sensitivity.pth"
    base = copy.deepcopy(base).cpu().eval()  # the caller's model stays where it is
    base_macs = measure_cost(base, example).macs
    lo, hi, best = 0.0, 100.0 * min(1.0, 1.5 * macs_limit / base_macs), None
    for _ in range(8):
        mid = (lo + hi) / 2
        try:
            model = _prune(base, example, mid, train, val, checkpoint)
        except ValueError:  # "NOT all constraints can be satisfied": below the smallest subnet
            lo = mid
            continue
        if measure_cost(model.eval(), example).macs <= macs_limit:
            lo, best = mid, model
        else:
            hi = mid
    if best is None:
        raise RuntimeError(f"FastNAS found no subnet within {macs_limit:.4g} MACs")
    return best
