"""The standard library as text: disjoint, stable splits of byte tokens, and perplexity that means what it says."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from evaluators._text import perplexity, split_of, stdlib_files, stdlib_text, windows


def test_the_splits_are_disjoint_by_file_and_stable() -> None:
    text = stdlib_text(max_bytes=200_000)
    sets = [set(text.files[k]) for k in ("train", "calibration", "validation", "heldout")]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    train = sets[0]
    assert sum(map(len, sets)) == len(stdlib_files()) > 300
    assert 0.7 < len(train) / len(stdlib_files()) < 0.9  # 80 % by path hash
    assert all(
        t.numel() == 200_000 and t.dtype == torch.long and int(t.max()) < 256 for t in (text.train, text.heldout)
    )
    # the split is a function of the relative path alone, the same on every machine
    pinned = {"os.py": "train", "asyncio/tasks.py": "heldout", "email/parser.py": "calibration"}
    assert {path: split_of(Path(path)) for path in pinned} == pinned
    assert {split_of(Path(f"m{i}.py")) for i in range(400)} == {"train", "calibration", "validation", "heldout"}
    # the tokens are the files' bytes
    first = stdlib_text(max_bytes=64).heldout
    assert (
        bytes(first.tolist()).decode()
        in (Path(__import__("sysconfig").get_paths()["stdlib"]) / text.files["heldout"][0]).read_text()
    )


class Uniform(nn.Module):
    """Every byte equally likely: perplexity 256, whatever the text."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 256) + self.w)


class Oracle(nn.Module):
    """Puts probability p on the true next byte (it peeks at the text): perplexity exactly 1/p."""

    def __init__(self, tokens: torch.Tensor, p: float) -> None:
        super().__init__()
        self.tokens, self.p, self.w = tokens, p, nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        nxt = torch.stack([self._next(row) for row in input_ids])
        other = math.log((1 - self.p) / 255)
        logits = torch.full((*input_ids.shape, 256), other)
        logits.scatter_(-1, nxt.unsqueeze(-1), math.log(self.p))
        return SimpleNamespace(logits=logits)

    def _next(self, row: torch.Tensor) -> torch.Tensor:
        n = row.numel()
        for start in range(self.tokens.numel() - n):
            if torch.equal(self.tokens[start : start + n], row):
                return self.tokens[start + 1 : start + n + 1]
        raise AssertionError("window not found")


def test_perplexity_is_exp_of_the_mean_next_token_loss() -> None:
    tokens = stdlib_text(max_bytes=4_000).heldout
    assert perplexity(Uniform(), tokens, context=64) == pytest.approx(256.0, rel=1e-6)
    assert perplexity(Oracle(tokens, 0.5), tokens, context=64, max_windows=5, batch_size=2) == pytest.approx(
        2.0, rel=1e-5
    )
    assert [w.numel() for w in windows(tokens[:201], 50)] == [51, 51, 51, 51]
    with pytest.raises(ValueError, match="make no window"):
        perplexity(Uniform(), tokens[:10], context=64)


def test_a_tiny_language_model_scores_near_the_uniform_before_training() -> None:
    from evaluators._hf import tiny_model

    ppl = perplexity(tiny_model("llama"), stdlib_text(max_bytes=20_000).heldout, context=128, max_windows=8)
    assert 200 < ppl < 320  # random weights: close to 256, never below what no knowledge gives by much
