"""Factorization surgery: exactness, Eckart–Young, break-even, joint plans, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spaces import LayerGeom, ModelSpace, Plan, PlanError, factorize_layer, measure_cost
from tests.spaces.models import MODELS, torchvision_model

CONVS = [
    nn.Conv2d(6, 8, 3, padding=1),
    nn.Conv2d(5, 12, 3, stride=2, padding=1),
    nn.Conv2d(16, 4, 3, padding=2, dilation=2, bias=False),
    nn.Conv2d(3, 16, (5, 3), stride=(2, 1), padding=(2, 1)),
    nn.Conv2d(8, 8, 1),
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"{c.in_channels}-{c.out_channels}-{c.kernel_size}-{c.stride}")
def test_full_rank_reproduces_conv_outputs(conv: nn.Conv2d) -> None:
    kh, kw = conv.kernel_size
    geom = LayerGeom("c", "conv", conv.out_channels, conv.in_channels, kh, kw)
    x = torch.randn(2, conv.in_channels, 11, 9)
    for method in geom.methods:
        fact = factorize_layer(conv, method, geom.full_ranks(method))
        torch.testing.assert_close(fact(x), conv(x), atol=1e-4, rtol=0)
    low_rank = ("svd", "tucker2") if kh * kw == 1 else ("svd", "tucker2", "tt")
    assert geom.methods == (low_rank if min(kh, kw) < 3 else (*low_rank, "versatile", "versatile_ch"))


def test_full_rank_reproduces_linear() -> None:
    lin = nn.Linear(10, 7)
    x = torch.randn(3, 10)
    torch.testing.assert_close(factorize_layer(lin, "svd", (7,))(x), lin(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("r", [1, 5, 17, 40])
def test_svd_is_the_best_rank_r_approximation(r: int) -> None:
    """Eckart–Young: relative Frobenius error = sqrt(discarded sigma^2 share)."""
    conv = nn.Conv2d(16, 48, 3, padding=1).double().requires_grad_(False)
    first, second = factorize_layer(conv, "svd", (r,))
    with torch.no_grad():
        kernel = (second.weight.flatten(1) @ first.weight.flatten(1)).reshape(conv.weight.shape)
        rel = float((kernel - conv.weight).norm() / conv.weight.norm())
    s = torch.linalg.svdvals(conv.weight.flatten(1))
    expected = math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))
    assert rel == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert first.out_channels == r and second.in_channels == r


def test_tt_and_tucker_truncate_with_the_advertised_ranks() -> None:
    conv = nn.Conv2d(16, 32, 3, padding=1)
    t1, t2, t3, t4 = factorize_layer(conv, "tt", (8, 12, 10))
    assert (t1.out_channels, t2.out_channels, t3.out_channels, t4.in_channels) == (8, 12, 10, 10)
    assert t2.kernel_size == (3, 1) and t3.kernel_size == (1, 3)
    a, b, c = factorize_layer(conv, "tucker2", (6, 9))
    assert (a.out_channels, b.in_channels, b.out_channels, c.in_channels) == (6, 6, 9, 9)


def test_break_even_rank() -> None:
    geom = LayerGeom("c", "conv", 64, 64, 3, 3, s_in=100, s_mid=100, s_out=100)
    # svd saves while r * (64*9 + 64) < 64 * 64*9, i.e. r < 57.6
    assert geom.max_useful_rank("svd") == 57
    assert geom.factor_ranks("svd", 60) is None  # above break-even: dense, not capped
    assert geom.factor_ranks("svd", 57) is None  # at break-even: dense
    assert geom.factor_ranks("svd", 56) == (56,)
    assert geom.factor_ranks("svd", 20) == (20,)
    assert geom.factor_ranks("svd", 1.0) is None
    lin = LayerGeom("fc", "linear", 10, 64, 1, 1, 1, 1, 1)
    assert lin.max_useful_rank("svd") == 8  # r * 74 < 640
    assert lin.factor_ranks("svd", 7) == (7,) and lin.factor_ranks("svd", 8) is None
    tiny = LayerGeom("t", "conv", 1, 1, 1, 1)
    assert tiny.factor_ranks("svd", 1) is None  # nothing saves: the layer stays dense


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(MODELS["resnet20"](), torch.randn(2, 3, 32, 32))


def test_plans_rank_at_or_above_break_even_keeps_the_layer_dense(space: ModelSpace) -> None:
    name = "layer3.1.conv1"  # 64 -> 64, 3x3: break-even 57
    assert space.layer(name).full_ranks("svd") == (64,)
    assert space.layer(name).max_useful_rank() == 57
    for spec in (64, 57, 1.0):
        model = space.apply(Plan(rank={name: spec}))
        assert isinstance(model.layer3[1].conv1, nn.Conv2d)  # never capped: the original layer
        assert name not in space.resolved_ranks(Plan(rank={name: spec}))
        assert space.cost(Plan(rank={name: spec})) == space.base_cost
    model = space.apply(Plan(rank={name: 56}))
    assert model.layer3[1].conv1[0].out_channels == 56
    model = space.apply(Plan(rank={name: 0.25}))
    assert model.layer3[1].conv1[0].out_channels == 16


def test_joint_plan_prunes_then_factorizes(space: ModelSpace) -> None:
    x = space.example_inputs[0]
    plan = Plan(
        prune={"layer3.0.conv1": 0.5, "conv1": 0.25},
        rank={"layer3.0.conv1": 0.5, "layer3.0.conv2": 10, "layer2.1.conv2": 0.3, "fc": 4},
        method={"layer3.0.conv2": "tt", "layer2.1.conv2": "tucker2"},
    )
    model = space.apply(plan)
    first = model.layer3[0].conv1[0]
    assert first.in_channels == 32 and first.out_channels == 16  # svd rank 0.5 of the pruned 32 outputs
    assert model.layer1[0].conv1.in_channels == 12  # group "conv1" (16 channels) pruned by 0.25
    assert isinstance(model.fc, nn.Sequential) and model.fc[0].out_features == 4
    assert space.cost(plan) == measure_cost(model, x)
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (lambda: Plan(rank={"layer1.0.conv1": 0}), "must be >= 1"),
        (lambda: Plan(rank={"layer1.0.conv1": 1.5}), r"must be in \(0, 1\]"),
        (lambda: Plan(rank={"layer1.0.conv1": 4}, method={"layer1.0.conv1": "cp"}), "must be one of svd"),
        (lambda: Plan(method={"layer1.0.conv1": "tt"}), "has a method but no rank"),
        (lambda: Plan(rank={"layer1.0.conv1": 17}), "above its full rank 16"),
        (lambda: Plan(rank={"fc": 2}, method={"fc": "tt"}), "does not apply to layer 'fc'"),
        (lambda: Plan(rank={"layer1.0.shortcut": 2}), "unknown layer"),
    ],
)
def test_bad_rank_plans(space: ModelSpace, plan, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError, match=message):
        space.cost(plan())


def test_depthwise_and_grouped_convs_are_skipped() -> None:
    torch.manual_seed(0)
    mb = ModelSpace(torchvision_model("mobilenet_v2"), torch.randn(1, 3, 32, 32))
    assert "depthwise" in mb.not_factorizable["features.1.conv.0.0"]
    with pytest.raises(PlanError, match="cannot be factorized: depthwise convolution"):
        mb.cost(Plan(rank={"features.1.conv.0.0": 0.5}))
    rg = ModelSpace(torchvision_model("regnet_y_400mf"), torch.randn(1, 3, 32, 32))
    grouped = [n for n, why in rg.not_factorizable.items() if "grouped" in why]
    assert grouped
    with pytest.raises(PlanError, match="grouped convolution"):
        rg.cost(Plan(rank={grouped[0]: 0.5}))
