"""Versatile filters (Wang et al. 2018): exact surgery, the original at s = 1, exact costs, the fit, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from spaces import LayerGeom, ModelSpace, Plan, PlanError, factorize_layer, measure_cost
from spaces.factorization import factor_method
from spaces.factorization._versatile import fit_versatile
from tests.spaces.models import ARCHS, MODELS, torchvision_model
from tests.spaces.test_full_rank import _one_thread  # noqa: F401  (autouse: batch-1 inputs on one thread)

CONVS = [
    nn.Conv2d(6, 8, 3, padding=1),
    nn.Conv2d(5, 12, 3, stride=2, padding=1),
    nn.Conv2d(16, 4, 3, padding=2, dilation=2, bias=False),
    nn.Conv2d(3, 16, (5, 3), stride=(2, 1), padding=(2, 1)),
    nn.Conv2d(6, 10, 3),  # no padding: the 1x1 secondaries read a cropped input
    nn.Conv2d(5, 9, 7, padding=3, dilation=2),
]
METHODS = ("versatile", "versatile_ch")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"{c.in_channels}-{c.out_channels}-{c.kernel_size}-{c.padding}")
def test_outputs_equal_a_plain_convolution_with_the_expanded_filter_bank(conv: nn.Conv2d, method: str) -> None:
    torch.manual_seed(0)
    conv = copy.deepcopy(conv).double()  # CONVS are shared by the tests
    x = torch.randn(2, conv.in_channels, 19, 17, dtype=torch.double)
    for p in (1, conv.out_channels // 3, conv.out_channels - 1):
        (layer,) = factorize_layer(conv, method, (max(p, 1),))
        dense = F.conv2d(x, layer.expanded_weight(), layer.bias, conv.stride, conv.padding, conv.dilation)
        torch.testing.assert_close(layer(x), dense, atol=1e-12, rtol=0)
        c_hat = layer.weight.shape[1]
        assert sum(t.numel() for t in layer.parameters()) == layer.weight.shape[0] * c_hat * conv.weight[
            0, 0
        ].numel() + (conv.out_channels if conv.bias is not None else 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"{c.in_channels}-{c.out_channels}-{c.kernel_size}-{c.padding}")
def test_one_primary_per_output_is_the_original_layer(conv: nn.Conv2d, method: str) -> None:
    """The paper's s = 1: p = C_out primaries over every input channel."""
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 13, 11)
    (layer,) = factorize_layer(conv, method, (conv.out_channels,))
    assert layer.weight.shape == conv.weight.shape
    torch.testing.assert_close(layer(x), conv(x), atol=1e-6, rtol=0)


def test_the_papers_structure_is_recovered_exactly_from_a_shuffled_bank() -> None:
    """A bank made of 3x3 primaries and their 1x1 centres, in a random output order, is fitted without error."""
    rng = np.random.default_rng(0)
    primaries = rng.standard_normal((6, 4, 3, 3))
    centres = np.zeros_like(primaries)
    centres[:, :, 1, 1] = primaries[:, :, 1, 1]
    bank = np.concatenate([primaries, centres])[rng.permutation(12)]
    fit = fit_versatile(bank, 6, 4)
    np.testing.assert_allclose(fit.expanded(), bank, atol=1e-12)
    geom = LayerGeom("c", "conv", 12, 4, 3, 3)
    assert factor_method("versatile").kept_share(bank, geom, (6,)) == pytest.approx(1.0)


def test_a_conv_whose_bank_is_versatile_is_rebuilt_exactly_channel_order_included() -> None:
    """The module (not only the fit) reproduces a conv made of shuffled primaries and centres: a wrong output
    permutation would show here."""
    rng = np.random.default_rng(0)
    primaries = rng.standard_normal((6, 4, 3, 3))
    centres = np.zeros_like(primaries)
    centres[:, :, 1, 1] = primaries[:, :, 1, 1]
    conv = nn.Conv2d(4, 12, 3, stride=2, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(np.concatenate([primaries, centres])[rng.permutation(12)]))
    (layer,) = factorize_layer(conv, "versatile", (6,))
    x = torch.randn(2, 4, 11, 9, dtype=torch.double)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-10, rtol=0)


def test_a_versatile_model_is_rebuilt_from_base_plan_and_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    space = ModelSpace(MODELS["resnet20"]().eval(), x, verify=False)
    plan = Plan(
        rank={"layer2.0.conv2": 0.3, "layer1.1.conv1": 0.5},
        method=dict.fromkeys(["layer2.0.conv2", "layer1.1.conv1"], "versatile_ch"),
    )
    trained = space.apply(plan).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as a fine-tune would move them
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    rebuilt = space.apply(plan).eval()
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), atol=0, rtol=0)


def test_the_fit_keeps_more_with_more_primaries_and_costs_are_the_papers() -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((32, 16, 3, 3))
    geom = LayerGeom("c", "conv", 32, 16, 3, 3, s_in=100, s_mid=100, s_out=100)
    vf = factor_method("versatile")
    shares = [vf.kept_share(bank, geom, vf.normalize(geom, (p,))) for p in (16, 20, 24, 28, 32)]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0) and shares[0] < 0.9
    assert vf.normalize(geom, (1,)) == (16,)  # two rings: never fewer than C_out / 2 primaries
    # s = 2: 16 primaries (half the parameters), 16 outputs 3x3 and 16 outputs 1x1
    assert vf.factor_cost(geom, (16,)) == (100 * 16 * 16 * (9 + 1), 16 * 16 * 9)
    ch = factor_method("versatile_ch")
    assert ch.normalize(geom, (1,)) == (8,)  # two windows, two rings: s = 4
    # 8 primaries of 12 channels: windows [0, 12) and [4, 16), 8 outputs per (window, ring) slot
    assert ch.factor_cost(geom, (8,)) == (100 * 12 * (16 * 9 + 16 * 1), 8 * 12 * 9)
    assert ch.factor_cost(geom, (16,)) == vf.factor_cost(geom, (16,))  # the rings suffice: spatial only
    # 12 primaries: slots (window 0, ring 0) 12, (window 0, ring 1) 12, (window 1, ring 0) the last 8
    assert ch.factor_cost(geom, (12,)) == (100 * 12 * (12 * 9 + 12 * 1 + 8 * 9), 12 * 12 * 9)
    assert geom.max_useful_rank("versatile") == 31  # p = C_out - 1 saves; p = C_out is the original


@pytest.mark.parametrize("name", list(ARCHS))
def test_analytic_cost_equals_measured_with_every_kxk_conv_versatile(name: str) -> None:
    torch.manual_seed(0)
    factory, size = ARCHS[name]
    x = torch.randn(1, 3, size, size)
    space = ModelSpace(factory().eval(), x, verify=False)
    for method in METHODS:
        layers = [g.name for g in space.layers if method in g.methods]
        if not layers:
            continue
        ranks = {n: (0.5 if i % 2 else 0.75) for i, n in enumerate(layers)}
        plan = Plan(rank=ranks, method=dict.fromkeys(ranks, method))
        model = space.apply(plan)
        with torch.no_grad():
            model(x)
        assert space.cost(plan) == measure_cost(model, x), (name, method)
        assert space.resolved_ranks(plan), (name, method)


def test_joint_plan_prunes_then_cuts_the_pruned_layer_into_versatile_filters() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    space = ModelSpace(MODELS["resnet20"]().eval(), x)
    plan = Plan(
        prune={"layer3.0.conv1": 0.5},
        rank={"layer3.0.conv1": 0.5, "layer2.1.conv1": 0.3},
        method={"layer3.0.conv1": "versatile", "layer2.1.conv1": "versatile_ch"},
    )
    model = space.apply(plan)
    (first,) = model.layer3[0].conv1
    assert first.out_channels == 32 and first.weight.shape == (16, 32, 3, 3)  # 32 pruned outputs, 16 primaries
    (second,) = model.layer2[1].conv1
    assert second.weight.shape == (10, 24, 3, 3)  # 10 primaries x 2 rings < 32 outputs: two windows of 24 channels
    assert space.cost(plan) == measure_cost(model, x)
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("rank", "method", "message"),
    [
        ({"layer3.0.shortcut.0": 4}, "versatile", "does not apply to layer 'layer3.0.shortcut.0'"),
        ({"layer2.0.shortcut.0": 0.5}, "versatile_ch", r"does not apply .* \(conv 1x1\)"),
        ({"fc": 2}, "versatile", "does not apply to layer 'fc'"),
        ({"layer1.0.conv1": 17}, "versatile", "above its full rank 16"),
        ({"layer1.0.conv1": 0}, "versatile", "must be >= 1"),
    ],
)
def test_bad_versatile_plans_are_one_line_errors(rank: dict, method: str, message: str) -> None:
    space = ModelSpace(MODELS["resnet20"](), torch.randn(1, 3, 32, 32), verify=False)
    with pytest.raises(PlanError, match=message) as err:
        space.cost(Plan(rank=rank, method=dict.fromkeys(rank, method)))
    assert "\n" not in str(err.value)


def test_depthwise_layers_are_refused() -> None:
    mb = ModelSpace(torchvision_model("mobilenet_v2"), torch.randn(1, 3, 32, 32), verify=False)
    with pytest.raises(PlanError, match="cannot be factorized: depthwise convolution"):
        mb.cost(Plan(rank={"features.1.conv.0.0": 0.5}, method={"features.1.conv.0.0": "versatile"}))
