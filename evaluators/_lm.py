"""Training a language model here: the teacher on text every machine has, and recovery, plain or distilled.

No pretrained language model can be downloaded, so the teacher is trained on
this machine on the ``train`` split of :mod:`evaluators._text` and cached as a
``save_pretrained`` directory (config.json + safetensors), which ``hf:PATH``
loads like any other model.

:func:`recover` is one loop for both uses. With ``kd_weight = 0`` (or no
teacher) it minimizes the next-token cross-entropy on the labels; with a
teacher it adds, with weight ``kd_weight``, the KL divergence from the
teacher's next-token distribution to the student's at temperature ``T``
(scaled by ``T**2``), which is how Minitron recovers a pruned model:
``(1 - kd_weight) * CE + kd_weight * T**2 * KL(teacher || student)``. Windows of
``context + 1`` tokens are drawn at random positions from a generator seeded
with ``seed``, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces.decoder import tokens_per_second  # measured speed, shared with the decoder's latency model

__all__ = ["cached_teacher", "kl_to_teacher", "random_windows", "recover", "tokens_per_second"]


def random_windows(tokens: torch.Tensor, context: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of ``batch_size`` windows of ``context + 1`` tokens at random positions (seeded)."""
    if tokens.numel() <= context + 1:
        raise ValueError(f"{tokens.numel()} tokens are too few for windows of {context} + 1")
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context + 1)
    while True:
        starts = torch.randint(0, tokens.numel() - context, (batch_size, 1), generator=g)  # the last window too
        yield tokens[starts + offsets]


def recover(
    student: nn.Module,
    tokens: torch.Tensor,
    *,
    steps: int,
    context: int = 128,
    batch_size: int = 8,
    lr: float = 1e-3,
    teacher: nn.Module | None = None,
    kd_weight: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Train ``student`` in place for ``steps`` steps (see the module docs); returns the loss of every step."""
    if not 0 <= kd_weight <= 1:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher")
    device = next(student.parameters()).device
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)  # linear warm-up over a tenth of the steps, then a cosine decay

    def factor(t: int) -> float:
        return min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    student.train()
    losses = []
    batches = random_windows(tokens, context, batch_size, seed)
    for _ in range(steps):
        x = next(batches).to(device)
        logits = student(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()) if kd_weight < 1 else logits.new_zeros(())
        if kd_weight > 0 and teacher is not None:
            with torch.no_grad():
                target = teacher(input_ids=x[:, :-1], use_cache=False).logits
            kd = _kl(logits, target, temperature) * temperature**2
            loss = (1 - kd_weight) * loss + kd_weight * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) at ``temperature``."""
    s = F.log_softmax(student_logits.flatten(0, 1).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.flatten(0, 1).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


@torch.no_grad()
def kl_to_teacher(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, *, context: int, windows: int) -> float:
    """Mean next-token KL(teacher || student) over the first ``windows`` windows of ``tokens``."""
    from evaluators._text import windows as consecutive

    batch = torch.stack(list(consecutive(tokens, context, limit=windows)))[:, :-1]
    device = next(student.parameters()).device
    s = student(input_ids=batch.to(device), use_cache=False).logits
    t = teacher(input_ids=batch.to(device), use_cache=False).logits
    return float(_kl(s, t, 1.0))


def cached_teacher(
    cache_dir: str | Path, family: str, tokens: torch.Tensor, *, steps: int, seed: int = 0, **config: object
) -> nn.Module:
    """A ``family`` model (``hf-tiny`` sizes, ``config`` overriding them) trained on ``tokens``, cached.

    The cache directory is named by a digest of everything that decides the
    weights (family, config, the training recipe, the tokens' digest); a
    second call loads it with :func:`evaluators._hf.hf_model` instead of training.
    """
    from evaluators._hf import hf_model, tiny_model

    recipe: dict[str, Any] = {"steps": steps, "seed": seed, "lr": 1e-3, "context": 128, "batch_size": 8}
    key = json.dumps({"family": family, "config": config, **recipe}, sort_keys=True)
    digest = hashlib.sha256(key.encode() + hashlib.sha256(tokens.to(torch.uint8).numpy().tobytes()).digest())
    path = Path(cache_dir) / f"teacher-{family}-{digest.hexdigest()[:16]}"
    if (path / "config.json").is_file():
        return hf_model(path)
    model: Any = tiny_model(family, seed=seed, **config)  # a transformers PreTrainedModel
    recover(model, tokens, **recipe)
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    partial.replace(path)  # whole or absent: a killed training leaves no half-written teacher
    return hf_model(path)
