from __future__ import annotations

import numpy as np
import pytest
import torch

from spaces import Budget, Cost, InfeasibleBudgetError, ModelSpace, Plan
from tests.spaces.models import MODELS, torchvision_model

BASE = Cost(macs=1_000_000, params=200_000, bytes=800_000)


def test_parse_units_and_slack() -> None:
    b = Budget(macs="40%", params="150K", bytes="0.5MB")
    assert b.absolute(BASE) == {"macs": 400_000, "params": 150_000, "bytes": 500_000}
    s = b.slack(Cost(500_000, 150_000, 400_000), BASE)
    assert s == pytest.approx({"macs": 0.25, "params": 0.0, "bytes": -0.2})
    assert not b.is_met(Cost(500_000, 150_000, 400_000), BASE)
    assert b.is_met(Cost(400_000, 150_000, 400_000), BASE)
    assert Budget(bytes="8MiB").absolute() == {"bytes": 8 * 2**20}
    assert Budget(macs=3e8).absolute() == {"macs": 3e8}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"macs": "40"}, "no unit"),
        ({"macs": -5}, "positive number"),
        ({"params": 0}, "positive number"),
        ({"bytes": "8 parsecs"}, "unknown unit"),
        ({"macs": "lots"}, "got 'lots'"),
        ({}, "at least one limit"),
        ({"macs": "150%"}, "at most 100% of the base model"),
        ({"bytes": "100.5%"}, "nothing to compress"),
    ],
)
def test_bad_budgets(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Budget(**kwargs)


def test_relative_budget_needs_base() -> None:
    with pytest.raises(ValueError, match="relative"):
        Budget(macs="40%").slack(BASE)


@pytest.fixture(scope="module", params=["resnet20", "mobilenet_v2", "vgg16_bn"])
def space(request: pytest.FixtureRequest) -> ModelSpace:
    torch.manual_seed(0)
    if request.param == "mobilenet_v2":
        model = torchvision_model("mobilenet_v2")
    else:
        model = MODELS[request.param]()
    return ModelSpace(model, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "budget",
    [Budget(macs="50%"), Budget(macs="30%", params="60%"), Budget(params="40%"), Budget(macs="70%", bytes="50%")],
)
def test_fit_meets_every_limit_and_lands_within_2_percent(space: ModelSpace, budget: Budget) -> None:
    for start in (Plan(), space.uniform_plan(0.7), Plan({space.groups[0].id: 0.5})):
        plan = space.fit(start, budget)
        cost = space.cost(plan)
        slack = budget.slack(cost, space.base_cost)
        assert max(slack.values()) <= 0, slack
        assert max(slack.values()) >= -0.02, slack
        assert space.cost(space.fit(plan, budget)) == cost  # a fitted plan is a fixed point


def test_fit_keeps_the_plans_shape(space: ModelSpace) -> None:
    g0 = space.groups[0].id
    plan = space.fit(Plan({g0: 0.8}), Budget(macs="60%"))
    frac = space.keep_counts(plan) / np.array([g.channels for g in space.groups])
    assert frac[0] < frac[1:].min()  # the group the plan prunes most stays the most pruned


def test_infeasible_budget_names_the_minimum(space: ModelSpace) -> None:
    with pytest.raises(InfeasibleBudgetError, match=r"macs <= .* is infeasible: the smallest achievable cost is macs="):
        space.fit(Plan(), Budget(macs="0.01%"))


def test_base_within_budget_returns_the_full_model(space: ModelSpace) -> None:
    assert space.fit(space.uniform_plan(0.5), Budget(macs="100%")).is_empty
