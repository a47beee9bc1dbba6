"""The depth dimension: which blocks a model may drop, exact costs per family, void ranks and bits, the sampler."""

from __future__ import annotations

import copy
from typing import cast

import pytest
import timm
import torch
import torchvision
from torch import nn

from evaluators._zoo import resnet20
from spaces import Budget, ModelSpace, Plan, PlanError, profile_space
from spaces.cost._cost import measure_cost
from spaces.dimensions import dimension
from spaces.dimensions._depth import DepthDimension, DepthOptions, droppable_blocks

DROP = "shortcut"


def _swin() -> nn.Module:
    return torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10
    )


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(32, 8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128)


def _timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=10)


# every family the issue names: the blocks found, by name (the downsampling blocks are not among them)
FAMILIES = {
    "zoo resnet20": (
        resnet20,
        32,
        ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"],
    ),
    "torchvision resnet18": (
        lambda: torchvision.models.resnet18(num_classes=10),
        64,
        ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    ),
    "torchvision mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5),
        64,
        [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)],
    ),
    "torchvision vit": (_vit, 32, [f"encoder.layers.encoder_layer_{i}" for i in range(3)]),
    "torchvision swin": (_swin, 32, ["features.1.0", "features.1.1", "features.3.0", "features.3.1"]),
    "timm resnet18": (
        lambda: timm.create_model("resnet18", num_classes=10),
        32,
        ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    ),
    "timm vit": (_timm_vit, 32, ["blocks.0", "blocks.1", "blocks.2"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_blocks_are_found_and_dropping_them_is_costed_exactly(family: str) -> None:
    make, size, expected = FAMILIES[family]
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    space = ModelSpace(make().eval(), (x,))  # the space's self-check builds depth's probe too
    assert list(droppable_blocks(space.costs)) == expected
    inner = [g.name for g in space.layers if g.name.startswith(expected[0] + ".")]
    plan = Plan(
        prune={space.groups[0].id: 0.5},
        depth={expected[0]: DROP, expected[-1]: DROP},
        rank={inner[0]: 0.25} if inner else None,  # inside a dropped block: void
    )
    built = space.apply(plan)
    analytic, measured = space.cost(plan), measure_cost(built, (x,))
    assert (analytic.macs, analytic.params, analytic.bytes) == (measured.macs, measured.params, measured.bytes)
    assert analytic.macs < space.cost(Plan(prune={space.groups[0].id: 0.5})).macs
    assert isinstance(built.get_submodule(expected[0]), nn.Identity)


def test_a_dropped_block_computes_its_shortcut_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = resnet20().eval()
    x = torch.randn(4, 3, 32, 32)
    space = ModelSpace(model, (x,))
    by_hand: nn.Module = copy.deepcopy(model)
    cast(nn.Sequential, by_hand.get_submodule("layer2"))[1] = nn.Identity()
    cast(nn.Sequential, by_hand.get_submodule("layer3"))[2] = nn.Identity()
    built = space.apply(Plan(depth={"layer2.1": DROP, "layer3.2": DROP})).eval()
    with torch.no_grad():
        assert torch.equal(built(x), by_hand(x))
    # the exact MAC formula, per image of the batch of 4: two 3x3 convolutions of 32 channels at 16x16, two of 64
    # at 8x8
    dropped = 4 * (2 * (32 * 32 * 9 * 16 * 16) + 2 * (64 * 64 * 9 * 8 * 8))
    assert space.base_cost.macs - space.cost(Plan(depth={"layer2.1": DROP, "layer3.2": DROP})).macs == dropped


def test_ranks_and_bits_inside_a_dropped_block_are_void() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    space = ModelSpace(resnet20().eval(), (x,))
    depth = {"layer3.1": DROP}
    inside = {"bits": {"layer3.1.conv1": 4}, "rank": {"layer3.1.conv2": 0.25}}
    outside = {"bits": {"layer3.2.conv1": 4}}
    assert space.cost(Plan(depth=depth, **inside)) == space.cost(Plan(depth=depth))  # type: ignore[arg-type]
    assert space.cost(Plan(depth=depth, **outside)).bytes < space.cost(Plan(depth=depth)).bytes  # type: ignore[arg-type]
    built = space.apply(Plan(depth=depth, bits={"layer3.1.conv1": 4, "layer3.2.conv1": 4}))
    measured = measure_cost(built, (x,))
    assert measured.params == space.cost(Plan(depth=depth)).params


def test_plan_json_and_one_line_errors() -> None:
    plan = Plan(depth={"layer2.1": DROP})
    assert Plan.from_json(plan.to_json()) == plan and '"depth": {"layer2.1": "shortcut"}' in plan.to_json()
    assert "depth" not in Plan(prune={"conv1": 0.5}).to_json()  # older plans keep their JSON and hash
    with pytest.raises(PlanError, match='depth of block .layer2.1. must be "shortcut"'):
        Plan(depth={"layer2.1": True})
    space = ModelSpace(resnet20().eval(), (torch.randn(1, 3, 32, 32),))
    with pytest.raises(PlanError, match="module 'layer2.0' cannot be dropped: .*droppable blocks: layer1.0"):
        space.cost(Plan(depth={"layer2.0": DROP}))  # its shortcut downsamples: the shapes differ
    with pytest.raises(PlanError, match="unknown block 'layer9.1'; droppable blocks: layer1.0, layer1.1"):
        space.cost(Plan(depth={"layer9.1": DROP}))


def test_the_sampler_drops_the_least_influential_blocks_first() -> None:
    torch.manual_seed(0)
    space = ModelSpace(resnet20().eval(), (torch.randn(8, 3, 32, 32),))
    depth = dimension("depth")
    assert isinstance(depth, DepthDimension)
    blocks = droppable_blocks(space.costs)
    assert depth.params(space, {}) == {}  # no [space.depth] table: not searched
    (spec,) = depth.params(space, {"depth": DepthOptions(max_share=0.5)}).values()
    assert (spec.low, spec.high, spec.step) == (0.0, 3.0, 1.0)  # at most 3 of the 7 blocks
    options = {"depth": DepthOptions()}
    entries = depth.from_params(space, {"blocks": 2.0}, options)
    least = sorted(blocks, key=lambda n: blocks[n].influence)[:2]
    assert sorted(entries["depth"]) == sorted(least)
    plan = Plan(depth=entries["depth"])
    assert depth.to_params(space, plan, {"blocks": spec}, options) == {"blocks": 2.0}
    assert depth.summary(plan, 3) == f"2 blocks dropped ({', '.join(n for n in blocks if n in least)})"


def test_the_latency_model_leaves_dropped_layers_out() -> None:
    torch.manual_seed(0)
    space = ModelSpace(resnet20().eval(), (torch.randn(1, 3, 32, 32),))
    prof = profile_space(space, threads=1, runs=1, warmup=0)
    full = prof.predict(space, Plan())
    dropped = prof.predict(space, Plan(depth={"layer3.1": DROP, "layer3.2": DROP}))
    tables, _ = prof.tables_at(space, space.keep_counts(Plan()))
    gone = sum(prof.layers[n].calls * prof.layers[n].at(64, 64) for n in prof.layers if n.startswith("layer3.1."))
    assert gone > 0 and 0 < dropped < full
    assert prof.tables_at(space, space.keep_counts(Plan()), removed=("layer3.1",))[0] == pytest.approx(tables - gone)


def test_the_allocator_drops_blocks_where_they_buy_the_budget_and_stays_exact() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    space = ModelSpace(resnet20().eval(), (x,))
    depth = dimension("depth")
    assert isinstance(depth, DepthDimension)
    assert depth.allocator_options({"depth": DepthOptions()}) == {"depth": True} and depth.allocator_options({}) == {}
    plans = depth.sensitivity_plans(space, {"depth": True})
    assert list(plans) == list(droppable_blocks(space.costs)) and plans["layer2.1"] == {
        DROP: {"depth": {"layer2.1": DROP}}
    }
    budget = Budget(macs="15%")
    plan = space.allocate(budget, depth=True).plan
    assert plan.entries("depth")  # at 15 % a whole block is worth more than the channels it would keep
    cost = space.cost(plan)
    assert cost.macs <= 0.15 * space.base_cost.macs and measure_cost(space.apply(plan), (x,)).macs == cost.macs
    assert not space.allocate(budget).plan.entries("depth")  # without depth=True the blocks stay
