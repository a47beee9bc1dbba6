"""Text every machine has, as bytes, in four disjoint splits, and the perplexity of a language model on it.

No corpus can be downloaded here, so the language-model path reads one that
every Python installation carries: **the standard library's own source**
(``sysconfig``'s ``stdlib`` directory; ``*.py`` files, test suites and
``site-packages`` left out; about 12 MB in 730 files on CPython 3.11). Its
exact content depends on the Python version, so a figure measured on it names
that version.

**Tokens are bytes** (a vocabulary of 256): nothing to train, download or
cache, every file encodes, and a model's vocabulary is fixed by the corpus.

**Splits by file, never by position.** A file goes wholly to one split by the
SHA-256 of its path relative to the standard library: 80 % ``train`` (teachers
and fine-tunes), 5 % ``calibration`` (importance and sensitivity), 5 %
``validation`` (what a search selects on), 10 % ``heldout`` (the test: only
reported). The same file is in the same split on every machine, and no split
sees another's text. Within a split, files are
concatenated in sorted path order, each followed by a newline.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SPLITS",
    "TextSplits",
    "from_losses",
    "perplexity",
    "split_of",
    "stdlib_files",
    "stdlib_text",
    "window_losses",
    "windows",
]

# shares of 100 by path hash
SPLITS = {"train": (0, 80), "calibration": (80, 85), "validation": (85, 90), "heldout": (90, 100)}
_SKIPPED = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``*.py`` files (see the module docs), relative to ``root``, sorted."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    files = (p.relative_to(root) for p in root.rglob("*.py"))
    return sorted(p for p in files if not _SKIPPED.intersection(p.parts))


def split_of(relative: Path) -> str:
    """The split a file belongs to, by the SHA-256 of its relative path (the same on every machine)."""
    bucket = int(hashlib.sha256(relative.as_posix().encode()).hexdigest(), 16) % 100
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


@dataclass(frozen=True)
class TextSplits:
    """Byte tokens (``torch.long``, values 0-255) of each split, and the files each came from."""

    train: torch.Tensor
    calibration: torch.Tensor
    validation: torch.Tensor
    heldout: torch.Tensor
    files: dict[str, tuple[str, ...]]


def stdlib_text(root: Path | None = None, *, max_bytes: int | None = None) -> TextSplits:
    """The four splits of the standard library's source (``max_bytes``: at most that many per split)."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    parts: dict[str, list[bytes]] = {name: [] for name in SPLITS}
    files: dict[str, list[str]] = {name: [] for name in SPLITS}
    for rel in stdlib_files(root):
        name = split_of(rel)
        parts[name].append((root / rel).read_bytes() + b"\n")
        files[name].append(rel.as_posix())
    tokens = {}
    for name, chunks in parts.items():
        data = b"".join(chunks)[:max_bytes]
        tokens[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return TextSplits(**tokens, files={k: tuple(v) for k, v in files.items()})


def windows(tokens: torch.Tensor, length: int, *, limit: int | None = None) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping windows of ``length + 1`` tokens (inputs and their next tokens)."""
    if length < 1:
        raise ValueError(f"window length must be at least 1, got {length}")
    n = (tokens.numel() - 1) // length
    for i in range(n if limit is None else min(n, limit)):
        yield tokens[i * length : (i + 1) * length + 1]


@torch.no_grad()
def window_losses(
    model: nn.Module, tokens: torch.Tensor, *, context: int, batch_size: int = 8, max_windows: int | None = None
) -> list[float]:
    """The mean next-token negative log-likelihood of each non-overlapping window of ``context`` (in order).

    Every token of a window but the first is predicted from the ones before it
    in the same window. Two models read on the same windows differ by the
    per-window differences, whose spread gives the comparison its standard
    error (:func:`storage.paired_difference`).
    """
    was_training = model.training
    model.eval()
    out: list[float] = []
    batch: list[torch.Tensor] = []
    device = next(model.parameters()).device
    try:
        for window in (*windows(tokens, context, limit=max_windows), None):
            if window is not None:
                batch.append(window)
            if batch and (window is None or len(batch) == batch_size):
                x = torch.stack(batch).to(device)
                logits = model(input_ids=x[:, :-1], use_cache=False).logits
                nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")
                out += nll.double().mean(dim=1).tolist()
                batch = []
    finally:
        model.train(was_training)
    if not out:
        raise ValueError(f"{tokens.numel()} tokens make no window of {context} + 1")
    return out


def perplexity(
    model: nn.Module, tokens: torch.Tensor, *, context: int, batch_size: int = 8, max_windows: int | None = None
) -> float:
    """``exp`` of the mean next-token negative log-likelihood over non-overlapping windows of ``context``
    (:func:`window_losses`: every window has ``context`` predictions, so the mean of their means is the
    mean over tokens). Lower is better; a model that gives every byte the same probability scores exactly 256.
    """
    return from_losses(window_losses(model, tokens, context=context, batch_size=batch_size, max_windows=max_windows))


def from_losses(losses: list[float]) -> float:
    """The perplexity of per-window mean losses of equal-length windows (:func:`window_losses`)."""
    return math.exp(math.fsum(losses) / len(losses))
