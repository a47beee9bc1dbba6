"""Sampler parameters <-> plans, and the early-stop rule."""

from __future__ import annotations

import pytest
import torch

from evaluators import build_model
from search import EarlyStop
from search._space import distributions, params_from_plan, plan_from_params
from spaces import ModelSpace


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    return ModelSpace(build_model("zoo:resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 8, 8))


def test_one_parameter_per_group_and_per_factorizable_layer(space: ModelSpace) -> None:
    d = distributions(space, max_ratio=0.8, rank=False, method="svd")
    assert sorted(d) == sorted(f"prune:{g.id}" for g in space.groups)
    assert all(x.low == 0.0 and x.high == 0.8 for x in d.values())
    d = distributions(space, max_ratio=0.8, rank=True, method="svd")
    ranks = [k for k in d if k.startswith("rank:")]
    assert all(d[k].low == 0.1 and d[k].high == 1.0 and d[k].step == 0.1 for k in ranks)
    assert len(ranks) == sum(1 for g in space.layers if g.max_useful_rank("svd") >= 2)


def test_params_and_plans_round_trip(space: ModelSpace) -> None:
    d = distributions(space, max_ratio=0.8, rank=True, method="svd")
    layer = next(k for k in d if k.startswith("rank:"))[5:]
    mur = space.layer(layer).max_useful_rank("svd")
    params = {k: (0.25 if k.startswith("prune:") else 1.0) for k in d}
    params[f"rank:{layer}"] = 0.5
    plan = plan_from_params(space, params, method="svd")
    assert set(plan.prune.values()) == {0.25} and dict(plan.rank) == {layer: max(1, round(0.5 * mur))}
    back = params_from_plan(space, plan, d, method="svd")
    assert back[f"rank:{layer}"] == pytest.approx(0.5, abs=0.1)
    assert all(back[k] == 0.25 for k in d if k.startswith("prune:"))
    assert all(back[k] == 1.0 for k in d if k.startswith("rank:") and k != f"rank:{layer}")


def test_early_stop_needs_a_cheaper_candidate_clearly_ahead_at_the_same_step() -> None:
    rule = EarlyStop([500.0], margin=0.02)
    rule.add([600.0], [(10, 0.99)])  # costs more: never a reason to stop
    rule.add([400.0], [(10, 0.90), (20, 0.95)])
    rule.add([450.0], None)  # no history: ignored
    assert rule(10, 0.89) is True  # cheaper one is ahead by 0.01 < margin
    assert rule(30, 0.50) is True  # nobody measured step 30
    assert rule(20, 0.92) is False  # ahead by 0.03 > margin
    assert rule.reason is not None and "step 20" in rule.reason and "0.9500" in rule.reason


def test_sampled_ratios_never_empty_a_small_group() -> None:
    from evaluators import ZOO

    space = ModelSpace(ZOO["plain8"](in_channels=1, num_classes=10, base=2), torch.randn(1, 1, 32, 32))
    small = min(space.groups, key=lambda g: g.channels)
    assert small.channels == 2
    plan = plan_from_params(space, {f"prune:{g.id}": 0.8 for g in space.groups}, method="svd")
    assert space.keep_counts(plan).min() == 1  # 0.8 of 2 channels would round to 2 removed
