"""The bits dimension: the simulated quantizer's arithmetic, exact bytes, one-line errors, plans without bits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spaces import (
    Budget,
    InputTypeError,
    ModelSpace,
    Plan,
    PlanError,
    Sensitivity,
    allocate,
    measure_cost,
    quantized_bytes,
)
from spaces._quant import QuantConv2d, QuantLinear, fake_quant_weight, quantize_layer
from spaces.dimensions._bits import quantizable_layers
from tests.spaces.models import MODELS


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(MODELS["resnet20"](), torch.randn(2, 3, 32, 32))


def test_weights_are_quantized_per_output_channel_as_computed_by_hand() -> None:
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.7, -0.2], [0.01, 0.03]]).view(2, 2, 1, 1))
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    quantize_layer(conv, 4)
    assert isinstance(conv, QuantConv2d) and conv.weight_bits == 4
    # 4 bits: q_max = 7; channel 0: scale 0.1, -0.2 -> -2 * 0.1; channel 1: scale 0.03 / 7, 0.01 -> round(2.33) = 2
    s1 = 0.03 / 7
    expected = torch.tensor([0.7 * 1 - 0.2 * 2, 2 * s1 * 1 + 7 * s1 * 2])
    torch.testing.assert_close(conv(x).flatten(), expected, rtol=0, atol=1e-7)
    w8 = fake_quant_weight(conv.weight, 8)  # 8 bits: scale 0.7 / 127 on channel 0
    assert float(w8[0, 1].detach()) == pytest.approx(round(-0.2 / (0.7 / 127)) * 0.7 / 127, abs=1e-7)  # float32


def test_inputs_are_quantized_affinely_on_the_observed_range_and_gradients_pass_straight_through() -> None:
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0]]))  # exact at 8 bits: scale 1/127, q = 127
    quantize_layer(lin, 8, act_bits=8)
    assert isinstance(lin, QuantLinear) and lin.act is not None
    lin.train()
    lin(torch.tensor([[-1.0, 0.0, 2.55]]))  # the first batch sets the range [-1, 2.55]
    lin.eval()
    scale, zero = 3.55 / 255, round(1.0 / (3.55 / 255))
    x = torch.tensor([[0.1, 1.0, 3.0]], requires_grad=True)  # 3.0 is clipped to 2.55
    q = [(min(max(round(v / scale) + zero, 0), 255) - zero) * scale for v in (0.1, 1.0, 3.0)]
    y = lin(x)
    assert float(y.detach()) == pytest.approx(sum(q), abs=1e-5)
    y.sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [[1.0, 1.0, 0.0]]  # straight through, none where clipped
    lin.train()
    lin(torch.tensor([[-3.0, 0.0, 0.0]]))  # later batches move the range by momentum 0.1
    assert float(lin.act.lo) == pytest.approx(0.9 * -1.0 + 0.1 * -3.0)


def test_bytes_of_bit_plans_are_exact_and_macs_unchanged(space: ModelSpace) -> None:
    x = space.example_inputs
    plan = Plan(prune={space.groups[0].id: 0.5}, bits={"conv1": 8, "layer3.2.conv2": 4, "fc": 4}, act_bits={"fc": 8})
    model = space.apply(plan)
    cost, dense = space.cost(plan), space.cost(Plan(prune=plan.prune))
    assert cost == measure_cost(model, x)
    assert (cost.macs, cost.params) == (dense.macs, dense.params)
    w = model.layer3[2].conv2.weight
    fc = model.fc.weight
    saved = (w.numel() * 4 - quantized_bytes(w.numel(), 64, 4)) + (fc.numel() * 4 - quantized_bytes(fc.numel(), 10, 4))
    c1 = model.conv1.weight
    saved += c1.numel() * 4 - (c1.numel() + 5 * c1.shape[0])  # 8 bits: a byte each, plus scale and zero point
    assert dense.bytes - cost.bytes == saved
    assert quantized_bytes(3, 1, 4) == 2 + 5  # 4-bit values are packed two to a byte


@pytest.mark.parametrize(
    ("entries", "error", "message"),
    [
        (
            {"bits": {"conv1": 6}},
            PlanError,
            r"bits of layer 'conv1' must be one of \(4, 8\) \(absent: float32\), got 6$",
        ),
        ({"bits": {"conv1": "8"}}, InputTypeError, "bits of layer 'conv1' must be an int"),
        ({"bits": {"conv1": True}}, InputTypeError, "bits of layer 'conv1' must be an int"),
        ({"bits": {"conv1": 8}, "act_bits": {"conv1": 4}}, PlanError, r"act_bits of layer 'conv1' must be one of"),
        ({"act_bits": {"conv1": 8}}, PlanError, "layer 'conv1' has act_bits but no bits"),
    ],
)
def test_bad_bit_plans_are_one_line_errors(entries: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        Plan(**entries)
    assert "\n" not in str(info.value)


def test_bits_on_layers_that_cannot_be_quantized_are_one_line_errors(space: ModelSpace) -> None:
    with pytest.raises(
        PlanError, match="unknown layer 'conv9'; quantizable layers are Conv2d/Linear names like 'conv1"
    ):
        space.cost(Plan(bits={"conv9": 8}))
    with pytest.raises(PlanError, match="layer 'layer1.0.conv1' has both a rank and bits"):
        space.apply(Plan(bits={"layer1.0.conv1": 8}, rank={"layer1.0.conv1": 4}))
    with pytest.raises(PlanError, match=r"unknown plan key\(s\) \['bit'\]"):
        Plan.from_json('{"prune": {}, "bit": {"conv1": 8}}')


def test_a_plan_without_bits_is_byte_identical_to_before(space: ModelSpace) -> None:
    plan = Plan({"b": 0.25, "a": 0.5}, importance="l2", round_to=4)
    assert plan.to_json() == '{"format": 1, "importance": "l2", "prune": {"a": 0.5, "b": 0.25}, "round_to": 4}'
    assert plan.hash == "593c984e017f04de"  # the hash this plan had before bits existed
    model = space.apply(space.uniform_plan(0.5))
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    assert measure_cost(model, space.example_inputs).bytes == 4 * sum(p.numel() for p in model.parameters())


def test_weights_file_of_a_quantized_model_loads_into_the_rebuilt_one(space: ModelSpace) -> None:
    plan = Plan(bits={"layer1.0.conv1": 4}, act_bits={"layer1.0.conv1": 8})
    (x,) = space.example_inputs
    a = space.apply(plan).train()
    a(x)  # calibrates the input range
    b = space.apply(plan)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert bool(b.layer1[0].conv1.act.seen)
    torch.testing.assert_close(a(x), b(x))
    assert math.isclose(float(b.layer1[0].conv1.act.hi), float(a.layer1[0].conv1.act.hi))


# ---------------------------------------------------------------------- bits in the allocator
def test_the_allocator_meets_a_bytes_budget_with_bits_before_channels(space: ModelSpace) -> None:
    base = space.base_cost
    layers = quantizable_layers(space.costs)
    int8 = space.cost(Plan(bits=dict.fromkeys(layers, 8))).bytes / base.bytes
    assert 0.25 < int8 < 0.26  # a quarter, plus a float32 scale and a zero point per output channel
    shares = {}
    for limit in ("25%", "10%"):
        budget = Budget(bytes=limit)
        joint = allocate(space, budget, rank=False, bits=True, act_bits=True).plan
        cost = space.cost(joint)
        assert (
            cost.bytes <= budget.absolute(base)["bytes"]
            and measure_cost(space.apply(joint), space.example_inputs) == cost
        )
        assert set(joint.bits) == set(layers) and set(joint.act_bits) == set(layers)
        channels_only = space.cost(allocate(space, budget, rank=False).plan)
        assert cost.macs > 1.4 * channels_only.macs  # bits take the bytes that pruning alone pays for in MACs
        shares[limit] = sum(layers[n] for n, b in joint.bits.items() if b == 4) / sum(layers.values())
    assert joint.prune and 0 < shares["25%"] < shares["10%"]  # a tighter budget: more weights at 4 bits, and pruning
    assert not allocate(space, Budget(bytes="25%"), rank=False, bits=True).plan.prune  # bits alone meet 25 %
    why = r"allocate: bits and rank cannot be searched together \(a factorized layer is not quantized\): choose one"
    with pytest.raises(PlanError, match=why):
        allocate(space, Budget(bytes="25%"), rank=True, bits=True)


def test_measured_bit_sensitivity_keeps_the_sensitive_layers_at_8_bits(space: ModelSpace) -> None:
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = space.model.eval()(x)

    def output_error(model: nn.Module) -> float:  # a loss: the squared output error on fixed inputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0  # the forward pass in training mode below must not move the statistics
        model.train()(x)  # it calibrates the input quantizers, as BatchNorm recalibration does
        with torch.no_grad():
            return float((model.eval()(x) - ref).pow(2).mean())

    sens = space.sensitivity(output_error, ratios=(0.5,), options={"bits": True})
    layers = quantizable_layers(space.costs)
    assert set(sens.dims["bits"]) == set(layers)
    assert all(r["4"] > r["8"] for r in sens.dims["bits"].values())  # 4 bits always hurt more than 8
    assert Sensitivity.from_json(sens.to_json()) == sens
    plan = allocate(space, Budget(bytes="20%"), rank=False, bits=True, sensitivity=sens).plan
    gain = {n: r["4"] - r["8"] for n, r in sens.dims["bits"].items()}
    eight = [gain[n] for n, b in plan.bits.items() if b == 8]
    four = [gain[n] for n, b in plan.bits.items() if b == 4]
    assert eight and four and sum(eight) / len(eight) > sum(four) / len(four)
