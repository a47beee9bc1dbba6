"""Teacher-referenced scores: how far a candidate's outputs are from the dense model's, with their noise.

Among plans within a point of each other, validation accuracy on a few
thousand images barely ranks them: it moves in whole images and ties. The dense
model (the teacher) gives a finer reference that needs no labels: on a pool of
training images that no fine-tune uses (:meth:`evaluators.DataBundle.hold_out_pool`),
its outputs are computed once (:meth:`TeacherPool.build`), and a candidate is
scored by

* ``kl``: the mean KL divergence ``KL(teacher || candidate)`` of the softmax
  outputs (lower is better: the candidate behaves as the dense model does),
* ``agreement``: the share of pool images whose top-1 class is the teacher's.

Every score carries its standard error (:class:`Scored`): a bootstrap over
the pool's images (the per-image values are kept), and two candidates scored
on the same pool are compared by their paired per-image differences
(:func:`paired`), whose error is far smaller than either score's when the two
models err on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["Scored", "TeacherPool", "bootstrap_se", "paired"]

_BOOTSTRAP = 200  # resamples of the pool for a standard error (its own error is about 5 %)


def bootstrap_se(values: np.ndarray, *, resamples: int = _BOOTSTRAP, seed: int = 0) -> float:
    """The standard error of ``values.mean()`` by the bootstrap (resampling images with replacement)."""
    if len(values) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return float(values[idx].mean(axis=1).std(ddof=1))


@dataclass(frozen=True)
class Scored:
    """A score, its bootstrap standard error, and the per-image values it is the mean of."""

    value: float
    se: float
    per_image: np.ndarray

    @classmethod
    def of(cls, per_image: np.ndarray) -> Scored:
        return cls(float(per_image.mean()), bootstrap_se(per_image), per_image)


def paired(a: Scored, b: Scored) -> Scored:
    """``a − b`` from the per-image differences (the same pool): the comparison of two candidates, and its error."""
    if a.per_image.shape != b.per_image.shape:
        raise ValueError(f"paired scores need the same pool: {a.per_image.shape} against {b.per_image.shape}")
    return Scored.of(a.per_image - b.per_image)


@dataclass(frozen=True)
class TeacherPool:
    """Pool images and the teacher's log-probabilities on them, computed once per study."""

    images: torch.Tensor
    log_probs: torch.Tensor  # the teacher's log-softmax, one row per image

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, pool: Dataset, *, batch_size: int = 256) -> TeacherPool:
        """Run ``teacher`` (in eval mode, on CPU) once over ``pool`` (``(image, label)`` items; labels unused)."""
        images = torch.cat([x for x, _ in DataLoader(pool, batch_size=batch_size, shuffle=False)])
        teacher = teacher.eval()
        device = next(teacher.parameters()).device
        outs = [F.log_softmax(teacher(chunk.to(device)).float(), dim=1).cpu() for chunk in images.split(batch_size)]
        return cls(images, torch.cat(outs))

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def score(self, model: nn.Module, *, batch_size: int = 256) -> dict[str, Scored]:
        """``{"kl": ..., "agreement": ...}`` of ``model`` (evaluated in eval mode) against the teacher."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        kl, agree = [], []
        for x, t in zip(self.images.split(batch_size), self.log_probs.split(batch_size), strict=True):
            s = F.log_softmax(model(x.to(device)).float(), dim=1).cpu()
            kl.append((t.exp() * (t - s)).sum(dim=1))
            agree.append((s.argmax(dim=1) == t.argmax(dim=1)).float())
        model.train(was_training)
        return {
            "kl": Scored.of(torch.cat(kl).double().numpy()),
            "agreement": Scored.of(torch.cat(agree).double().numpy()),
        }
