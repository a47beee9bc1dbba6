"""Ranks mean what they say: a rank at or above a layer's break-even rank keeps the layer dense.

Over every architecture of the suite and every method: rank ``1.0``, the int
full rank and the int break-even rank all give back exactly the original model
(same outputs, same parameter count, base cost, no layer reported factorized);
a rank just below break-even factorizes and saves. Spaces are built without the self-check (``verify=False``:
it is about channel groups, not ranks) to keep the test fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from spaces import Budget, LayerGeom, ModelSpace, Plan, PlanError, measure_cost
from spaces.dimensions._rank import factorized_at
from tests.spaces.models import ARCHS

METHODS = ("svd", "tucker2", "tt", "versatile", "versatile_ch")
_CACHE: dict[str, tuple[nn.Module, torch.Tensor, ModelSpace]] = {}


def _space(name: str) -> tuple[nn.Module, torch.Tensor, ModelSpace]:
    if name not in _CACHE:
        torch.manual_seed(0)
        factory, size = ARCHS[name]
        model = factory().eval()
        x = torch.randn(1, 3, size, size)
        _CACHE[name] = (model, x, ModelSpace(model, x, verify=False))
    return _CACHE[name]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Batch-1 32x32 inputs gain nothing from intra-op threads, and on a busy 2-core box they spin (10-50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plan(layers: dict[str, int | float], method: str) -> Plan:
    return Plan(rank=layers, method=dict.fromkeys(layers, method))


@pytest.mark.parametrize("name", list(ARCHS))
def test_full_and_break_even_ranks_give_back_the_original_model(name: str) -> None:
    model, x, space = _space(name)
    with torch.no_grad():
        ref = model(x)
    base_params = _n_params(model)
    for method in METHODS:
        geoms = [g for g in space.layers if method in g.methods]
        if not geoms:
            continue
        full = {g.name: max(g.full_ranks(method)) for g in geoms}
        break_even = {g.name: max(1, g.max_useful_rank(method)) for g in geoms}
        plans = {
            "1.0": _plan({g.name: 1.0 for g in geoms}, method),
            "full": _plan(full, method),
            "break-even": _plan(break_even, method),
            # built and run: the int full rank on every other layer, the break-even rank on the rest
            "full / break-even": _plan(
                {g.name: (full if i % 2 else break_even)[g.name] for i, g in enumerate(geoms)}, method
            ),
        }
        for label, plan in plans.items():
            assert space.resolved_ranks(plan) == {}, (method, label)  # every layer reported dense
            assert space.cost(plan) == space.base_cost, (method, label)
            if label in ("full", "break-even"):
                continue  # the cost model's answer; the surgery is run on the mixed plan
            out = space.apply(plan)
            with torch.no_grad():
                y = out(x)
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6, msg=f"{name} {method} {label}")
            assert _n_params(out) == base_params, (method, label)
            for g in geoms:  # exactly the original layer, not a factor chain
                assert type(out.get_submodule(g.name)) is type(model.get_submodule(g.name)), (method, label, g.name)


@pytest.mark.parametrize("name", list(ARCHS))
def test_rank_just_below_break_even_factorizes(name: str) -> None:
    _, _, space = _space(name)
    for method in METHODS:
        geoms = [g for g in space.layers if method in g.methods and g.max_useful_rank(method) >= 2]
        if not geoms:
            continue
        # the cost model on every such layer; the surgery on the smallest (factorizing is slow on CPU)
        every = _plan({g.name: g.max_useful_rank(method) - 1 for g in geoms}, method)
        resolved = space.resolved_ranks(every)
        assert set(resolved) == {g.name for g in geoms}, method
        cost = space.cost(every)
        assert cost.macs < space.base_cost.macs and cost.params < space.base_cost.params
        small = min(geoms, key=lambda g: g.dense_cost()[1])
        plan = _plan({small.name: small.max_useful_rank(method) - 1}, method)
        out = space.apply(plan)
        assert isinstance(out.get_submodule(small.name), nn.Sequential), method
        cost = space.cost(plan)
        assert cost.params == _n_params(out) < space.base_cost.params
        assert cost.macs < space.base_cost.macs


def test_the_rule_on_one_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    space = ModelSpace(model, x)
    name = "2"
    geom = space.layer(name)
    assert geom.full_ranks("svd") == (32,)
    assert geom.max_useful_rank("svd") == 27  # r * (24*9 + 32) < 32 * 24*9: r < 27.9
    with torch.no_grad():
        ref = model(x)
    for method in METHODS:
        be = geom.max_useful_rank(method)
        full = max(geom.full_ranks(method))
        assert 2 <= be < full, method
        for spec in (be, be + 1, full, 1.0):
            plan = _plan({name: spec}, method)
            out = space.apply(plan)
            assert isinstance(out.get_submodule(name), nn.Conv2d), (method, spec)
            with torch.no_grad():
                torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-6)
            assert space.cost(plan) == space.base_cost and space.resolved_ranks(plan) == {}
        plan = _plan({name: be - 1}, method)
        out = space.apply(plan)
        assert isinstance(out.get_submodule(name), nn.Sequential), method
        assert space.resolved_ranks(plan) == {name: (method, geom.resolve(method, be - 1))}
        cost = space.cost(plan)
        assert cost == measure_cost(out, x)
        assert cost.macs < space.base_cost.macs and cost.params < space.base_cost.params
        with pytest.raises(PlanError, match=f"rank {full + 1} of layer '2' is above its full rank {full}"):
            space.cost(_plan({name: full + 1}, method))


@pytest.mark.parametrize(
    "geom",
    [
        LayerGeom("a", "conv", 64, 64, 3, 3, 100, 100, 100),
        LayerGeom("b", "conv", 16, 96, 3, 3, 64, 32, 16),
        LayerGeom("c", "conv", 120, 8, 5, 3, 9, 9, 4),
        LayerGeom("d", "conv", 48, 40, 1, 1, 49, 49, 49),
        LayerGeom("e", "linear", 10, 64, 1, 1, 2, 2, 2),
    ],
    ids=lambda g: g.name,
)
def test_int_ranks_are_factorized_exactly_below_break_even(geom: LayerGeom) -> None:
    """``factor_ranks`` (cost against the break-even rank's) is ``r < max_useful_rank`` for every int rank."""
    for method in geom.methods:
        be = geom.max_useful_rank(method)
        for r in range(1, max(geom.full_ranks(method)) + 1):
            ranks = geom.factor_ranks(method, r)
            assert (ranks is None) == (r >= be), (method, r, be)
            if ranks is not None:
                assert ranks == geom.resolve(method, r) and geom.saves(method, ranks)
        for k in range(1, 11):  # fractions: resolved, then the same rule
            ranks = geom.factor_ranks(method, k / 10)
            assert ranks is None or geom.saves(method, ranks)
            if method == "svd":
                assert (ranks is None) == (geom.resolve(method, k / 10)[0] >= be)
        assert geom.factor_ranks(method, 1.0) is None


def test_ranks_resolve_on_the_pruned_shape() -> None:
    _, x, space = _space("resnet20")
    pruned = space.uniform_plan(0.5)
    layers = [g.name for g in space.layers]
    ref = space.apply(pruned)
    with torch.no_grad():
        y_ref = ref(x)
    for rank in (1.0, 64):  # 64: the largest full rank; clamped to each pruned layer's, so dense
        plan = Plan(prune=pruned.prune, rank={n: min(rank, max(space.layer(n).full_ranks("svd"))) for n in layers})
        assert space.resolved_ranks(plan) == {}
        assert space.cost(plan) == space.cost(pruned)
        with torch.no_grad():
            torch.testing.assert_close(space.apply(plan)(x), y_ref, rtol=1e-5, atol=1e-6)
    # a rank below the unpruned layer's break-even but at the pruned layer's is dense too
    name = "layer3.1.conv1"  # 64 -> 64, 3x3: break-even 57; pruned to 32 -> 32: 28
    keep = space.keep_counts(pruned)
    assert space.costs.pruned_geom(name, keep).max_useful_rank() == 28
    for r, dense in ((28, True), (27, False), (40, True)):
        plan = Plan(prune=pruned.prune, rank={name: r})
        assert (name not in space.resolved_ranks(plan)) is dense


def test_allocator_ranks_are_below_break_even() -> None:
    _, _, space = _space("resnet20")
    budget = Budget(macs="50%", params="50%")
    plan = space.allocate(budget, prune=False, time_limit=5.0).plan
    assert plan.rank
    resolved = space.resolved_ranks(plan)
    assert set(resolved) == set(plan.rank)  # every rank it emits is below break-even, so factorized
    for name, r in plan.rank.items():
        assert resolved[name] == ("svd", (r,))
        assert r < space.layer(name).max_useful_rank("svd")
    assert space.cost(plan).params == _n_params(space.apply(plan))
    # a rank the allocator's new pruning puts at break-even leaves the layer dense, in its own costs too
    keep = space.keep_counts(space.uniform_plan(0.5))
    name = "layer3.1.conv1"  # break-even 57, 28 when pruned to 32 -> 32
    assert factorized_at(space.costs, keep, {name: ("svd", 28)}) == {}
    assert factorized_at(space.costs, keep, {name: ("svd", 27)}) == {name: ("svd", (27,))}
