"""Training language models here: a teacher that learns the standard library, recovery plain or distilled, a cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluators import _lm
from evaluators._hf import tiny_model
from evaluators._lm import cached_teacher, kl_to_teacher, recover
from evaluators._text import perplexity, stdlib_text
from spaces import Plan
from spaces.decoder import apply_decoder_plan

TEXT = stdlib_text(max_bytes=200_000)
PRUNE = Plan(prune={"model.layers.0.mlp": 0.9, "model.layers.1.mlp": 0.9, "model.layers.1.attn": 0.5})


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    model = tiny_model("llama")
    recover(model, TEXT.train, steps=80, lr=3e-3, context=64)
    return model


def test_a_teacher_trained_here_learns_the_held_out_text(teacher: torch.nn.Module) -> None:
    before = perplexity(tiny_model("llama"), TEXT.heldout, context=64, max_windows=16)
    after = perplexity(teacher, TEXT.heldout, context=64, max_windows=16)
    assert before > 200 and after < 40, (before, after)


def test_distillation_brings_a_pruned_student_toward_its_teacher(teacher: torch.nn.Module) -> None:
    student, plain = apply_decoder_plan(teacher, PRUNE), apply_decoder_plan(teacher, PRUNE)
    gap = kl_to_teacher(student, teacher, TEXT.heldout, context=64, windows=16)
    losses = recover(student, TEXT.calibration, steps=20, context=64, teacher=teacher, kd_weight=1.0, seed=1)
    recover(plain, TEXT.calibration, steps=20, context=64, seed=1)
    assert len(losses) == 20
    distilled = kl_to_teacher(student, teacher, TEXT.heldout, context=64, windows=16)
    assert distilled < gap / 2
    assert distilled < kl_to_teacher(plain, teacher, TEXT.heldout, context=64, windows=16)  # the labels alone: farther
    with pytest.raises(ValueError, match="needs a teacher"):
        recover(student, TEXT.calibration, steps=1, kd_weight=0.5)
    with pytest.raises(ValueError, match=r"kd_weight must be in \[0, 1\]"):
        recover(student, TEXT.calibration, steps=1, teacher=teacher, kd_weight=2.0)


def test_the_teacher_is_trained_once_and_loaded_from_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = TEXT.train[:20_000]
    first = cached_teacher(tmp_path, "llama", tokens, steps=3, num_hidden_layers=1)
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("teacher-llama-") and (cached / "config.json").is_file()

    def no_training(*args: object, **kwargs: object) -> list[float]:
        raise AssertionError("trained again")

    monkeypatch.setattr(_lm, "recover", no_training)
    again = cached_teacher(tmp_path, "llama", tokens, steps=3, num_hidden_layers=1)
    ids = TEXT.heldout[:32].unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(first(input_ids=ids).logits, again(input_ids=ids).logits)
    with pytest.raises(AssertionError, match="trained again"):  # another setting is another teacher
        cached_teacher(tmp_path, "llama", tokens, steps=4, num_hidden_layers=1)
