"""The COBLA-style allocator: budgets met, energy beats uniform ranks, fallback reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spaces import AllocatorFallbackWarning, Budget, ModelSpace, Plan, allocate
from spaces.policy._allocate import _Allocator
from tests.spaces.models import MODELS, torchvision_model

_SPACES: dict[str, ModelSpace] = {}


def _space(name: str) -> ModelSpace:
    if name not in _SPACES:
        torch.manual_seed(0)
        model = torchvision_model("mobilenet_v2") if name == "mobilenet_v2" else MODELS[name]()
        _SPACES[name] = ModelSpace(model, torch.randn(1, 3, 32, 32))
    return _SPACES[name]


def _energy(space: ModelSpace, plan: Plan) -> float:
    """Kept sigma^2 share summed over factorizable layers (a dense layer keeps 1)."""
    factors = space.resolved_ranks(plan)
    return sum(space.energy(n)[factors[n][1][0] - 1] if n in factors else 1.0 for n in (g.name for g in space.layers))


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenet_v2"])
@pytest.mark.parametrize("frac", ["30%", "50%", "70%"])
def test_joint_allocation_meets_mac_and_param_budgets(name: str, frac: str) -> None:
    space = _space(name)
    budget = Budget(macs=frac, params=frac)
    result = allocate(space, budget, time_limit=300.0)  # the solve, not the machine's load, is under test
    assert result.solver == "milp"
    cost = space.cost(result.plan)
    slack = budget.slack(cost, space.base_cost)
    assert max(slack.values()) <= 0, slack
    assert max(slack.values()) >= -0.02, slack
    assert space.fit(result.plan, budget) == result.plan  # passes fit unchanged
    model = space.apply(result.plan)
    assert sum(p.numel() for p in model.parameters()) == cost.params


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenet_v2"])
def test_rank_allocation_keeps_more_energy_than_uniform_ranks(name: str) -> None:
    space = _space(name)
    plan = space.allocate(Budget(macs="50%"), prune=False).plan
    assert not plan.prune and plan.rank
    macs = space.cost(plan).macs
    # the uniform-rank plan (one fraction for every layer) with at least as many MACs
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if space.cost(Plan(rank={n: mid for n in (g.name for g in space.layers)})).macs >= macs:
            hi = mid
        else:
            lo = mid
    uniform = Plan(rank={n: hi for n in (g.name for g in space.layers)})
    assert space.cost(uniform).macs >= macs
    assert _energy(space, plan) > _energy(space, uniform)


def test_pruning_only_and_rank_only_modes() -> None:
    space = _space("resnet20")
    budget = Budget(macs="50%")
    pruned = space.allocate(budget, rank=False).plan
    assert pruned.prune and not pruned.rank
    ranked = space.allocate(budget, prune=False).plan
    assert ranked.rank and not ranked.prune
    with pytest.raises(ValueError, match="prune=True, rank=True or both"):
        space.allocate(budget, prune=False, rank=False)


def test_greedy_fallback_is_reported_and_meets_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    space = _space("resnet20")
    monkeypatch.setattr(_Allocator, "solve_milp", lambda self, prog, limits, t: None)
    budget = Budget(macs="40%", params="60%")
    with pytest.warns(AllocatorFallbackWarning):
        result = allocate(space, budget)
    assert result.solver == "greedy" and "greedy" in result.messages[0]
    assert space.cost(result.plan).macs <= 0.4 * space.base_cost.macs
    assert budget.is_met(space.cost(result.plan), space.base_cost)


def test_greedy_alone_is_close_to_the_milp() -> None:
    space = _space("resnet20")
    alloc = _Allocator(space, Budget(macs="50%"), True, True, 16)
    prog, layout = alloc.program(alloc.start())
    limits = np.array([alloc.limits["macs"]])
    x_milp = alloc.solve_milp(prog, limits, 5.0)
    x_greedy = alloc.solve_greedy(prog, layout, limits)
    assert x_milp is not None
    for x in (x_milp, x_greedy):
        assert (prog.costs @ x + prog.const <= limits * (1 + 1e-9)).all()
    assert prog.values @ x_milp >= prog.values @ x_greedy - 1e-9  # the program is optimal
    assert prog.values @ x_greedy >= 0.9 * prog.values @ x_milp


@pytest.mark.parametrize("method", ["tucker2", "tt", "versatile", "versatile_ch"])
def test_every_registered_method_can_be_allocated(method: str) -> None:
    space = _space("resnet20")
    budget = Budget(macs="60%")
    plan = space.allocate(budget, prune=False, method=method, time_limit=30.0).plan
    assert plan.rank and set(plan.method.values()) == {method}
    cost = space.cost(plan)
    assert budget.is_met(cost, space.base_cost)
    assert sum(p.numel() for p in space.apply(plan).parameters()) == cost.params


# ---------------------------------------------------------------------- measured sensitivity
def test_sensitivity_is_measured_per_group_down_to_one_channel_and_steers_the_allocator() -> None:
    space = _space("resnet20")
    calls: list[tuple[int, ...]] = []

    def loss(model: torch.nn.Module) -> float:
        """A stand-in loss: rises only when layer2.0.conv1 (32 channels) loses channels."""
        calls.append(tuple(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)))
        kept = model.get_submodule("layer2.0.conv1").out_channels
        return 1.0 + (32 - kept) / 4

    sens = space.sensitivity(loss)
    assert len(calls) == 1 + sum(len(v) for v in sens.points.values())  # the base, then one model per point
    g = space.group("layer2.0.conv1")
    assert [k for k, _ in sens.points[g.id]] == [24, 16, 8, 3, 1]  # ratios 0.25, 0.5, 0.75, 0.9, and one channel
    assert sens.points[g.id][-1] == (1, 31 / 4)
    assert all(r == 0.0 for gid, pts in sens.points.items() if gid != g.id for _, r in pts)
    levels = np.array([1, 2, 8, 20, 32])
    np.testing.assert_allclose(sens.values(g.id, 32, levels), [-7.75, -7.5, -6.0, -3.0, 0.0])
    budget = Budget(macs="40%")
    guided = allocate(space, budget, rank=False, sensitivity=sens, time_limit=300.0).plan
    assert space.keep_counts(guided)[space.costs.group_index(g.id)] == 32  # the only group whose loss rises
    assert max(budget.slack(space.cost(guided), space.base_cost).values()) <= 0
    again = type(sens).from_json(sens.to_json())
    assert again == sens
