"""Teacher-referenced scores (``evaluators._teacher``): exact KL and agreement, their errors, the held-out pool."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from evaluators import Scored, TeacherPool, bootstrap_se, build_model, load_data, paired


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, TeacherPool]:
    torch.manual_seed(0)
    data = load_data("digits")
    teacher = build_model("zoo:resnet20", in_channels=1, num_classes=10).eval()
    return teacher, TeacherPool.build(teacher, data.val)


def test_the_teacher_scores_itself_as_perfect(setup: tuple[torch.nn.Module, TeacherPool]) -> None:
    teacher, pool = setup
    s = pool.score(teacher)
    assert abs(s["kl"].value) < 1e-6 and s["kl"].se < 1e-6
    assert s["agreement"].value == 1.0 and s["agreement"].se == 0.0


def test_kl_and_agreement_are_the_exact_per_image_values(setup: tuple[torch.nn.Module, TeacherPool]) -> None:
    teacher, pool = setup
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = pool.score(student.train())  # scored in eval mode, and left in the mode it came in
    assert student.training
    with torch.no_grad():
        t = F.log_softmax(teacher(pool.images), dim=1)
        q = F.log_softmax(student.eval()(pool.images), dim=1)
    kl = F.kl_div(q, t, log_target=True, reduction="none").sum(dim=1).double().numpy()
    assert np.allclose(s["kl"].per_image, kl, atol=1e-5) and s["kl"].value > 0.0
    agree = (q.argmax(1) == t.argmax(1)).double().numpy()
    assert np.array_equal(s["agreement"].per_image, agree) and s["agreement"].value == agree.mean()


def test_the_bootstrap_error_is_the_standard_error_of_a_mean() -> None:
    values = np.random.default_rng(1).binomial(1, 0.8, size=4000).astype(float)
    expected = values.std(ddof=1) / np.sqrt(len(values))  # 0.0063
    assert abs(bootstrap_se(values) - expected) < 0.15 * expected


def test_paired_differences_are_sharper_than_either_score() -> None:
    rng = np.random.default_rng(2)
    hard = rng.binomial(1, 0.3, size=3000).astype(float)  # images both models find hard
    a = Scored.of(np.clip(hard + (rng.random(3000) < 0.02), 0, 1))
    b = Scored.of(hard)
    diff = paired(a, b)
    assert diff.value == pytest.approx(a.value - b.value) and diff.se < 0.5 * min(a.se, b.se)
    with pytest.raises(ValueError, match="the same pool"):
        paired(a, Scored.of(hard[:10]))


def test_the_pool_is_held_out_of_the_fine_tunes() -> None:
    data = load_data("digits")
    size = len(data.train)
    pool = data.hold_out_pool(300)
    assert len(pool) == 300 and len(data.train) == size - 300
    assert isinstance(pool, Subset) and isinstance(data.train, Subset)
    held, kept = set(pool.indices), set(data.train.indices)
    assert not held & kept and held | kept == set(range(size))  # a fine-tune's epoch never reaches the pool
    assert max(held) - min(held) > size // 2  # drawn over the whole split, not its tail
    assert sum(len(y) for _, y in data.train_loader(64, seed=0)) == size - 300
    with pytest.raises(ValueError, match=r"a teacher pool of 5000 images needs 0 < n < "):
        data.hold_out_pool(5000)
