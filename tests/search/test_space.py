"""Sampler parameters <-> plans, cost levels, and the rungs' promotion rule."""

from __future__ import annotations

import pytest
import torch

from evaluators import build_model
from search import promotes, promotion_order
from search.sampling._params import distributions, params_from_plan, plan_from_params
from search.study._rungs import crowding_distance, nondominated_ranks
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


def test_every_method_on_a_method_per_layer_round_trips(space: ModelSpace) -> None:
    opts = {"max_ratio": 0.8, "rank": True, "method": "svd", "methods": ["svd", "tt", "versatile"]}
    d = distributions(space, opts)
    # a method index per layer where two or more apply: every 3x3 conv (svd, tt, versatile); fc takes svd only
    assert d["rank:layer1.0.conv1@method"].low == 0 and d["rank:layer1.0.conv1@method"].high == 2
    assert d["rank:layer1.0.conv1@method"].step == 1 and "rank:fc@method" not in d
    params = {k: (0.0 if k.startswith("prune:") else 1.0) for k in d}
    params.update({"rank:layer1.0.conv1": 0.5, "rank:layer1.0.conv1@method": 2, "rank:layer2.0.conv2": 0.3})
    params["rank:layer2.0.conv2@method"] = 1
    plan = plan_from_params(space, params, opts)
    assert dict(plan.method) == {"layer1.0.conv1": "versatile", "layer2.0.conv2": "tt"}
    mur = space.layer("layer1.0.conv1").max_useful_rank("versatile")
    assert plan.rank["layer1.0.conv1"] == round(0.5 * mur)  # the fraction is of the chosen method's break-even rank
    back = params_from_plan(space, plan, d, opts)
    assert plan_from_params(space, back, opts) == plan
    assert back["rank:layer1.0.conv1@method"] == 2 and back["rank:layer3.0.conv1"] == 1.0


def test_per_stage_ratios_three_for_resnet20_round_trip(space: ModelSpace) -> None:
    opts = {"max_ratio": 0.8, "rank": False, "method": "svd", "sample_by": "stages"}
    d = distributions(space, opts, floor=0.25)
    assert sorted(d) == ["level", "prune:stage1", "prune:stage2", "prune:stage3"]  # 8x8, 4x4 and 2x2 outputs
    stage = space.stages()
    assert sum(len(ids) for ids in stage.values()) == len(space.groups)
    sizes = {unit: {space.costs.trace.spatial[space.group(g).outputs[0]] for g in ids} for unit, ids in stage.items()}
    assert list(sizes.values()) == [{64}, {16}, {4}]
    params = {"level": 0.5, "prune:stage1": 0.1, "prune:stage2": 0.4, "prune:stage3": 0.7}
    plan = plan_from_params(space, params, opts)
    assert {gid: plan.prune[gid] for gid in stage["stage2"]} == dict.fromkeys(stage["stage2"], 0.4)
    assert all(plan.prune[gid] == 0.7 for gid in stage["stage3"])
    assert params_from_plan(space, plan, d, opts, level=0.5) == params  # a plan uniform per stage maps back exactly


def _anchors(space: ModelSpace) -> dict[str, dict[str, float]]:
    """Three distinct one-shot plans at about half the MACs (their ratios are what a blend mixes)."""
    from spaces import Budget

    budget = Budget(macs="50%")
    uniform = space.fit(space.uniform_plan(0.0), budget)
    glob = space.global_plan(budget)
    first = space.groups[0].id  # a hand-made third: the first group spared, the rest cut harder
    third = space.fit(space.uniform_plan(0.5).replace(prune={g.id: 0.5 for g in space.groups[1:]}), budget)
    assert first not in third.prune
    return {"uniform": dict(uniform.prune), "global": dict(glob.prune), "allocator": dict(third.prune)}


def test_the_blend_mixes_the_anchors_kept_fractions_tilted_per_stage(space: ModelSpace) -> None:
    anchors = _anchors(space)
    opts = {"max_ratio": 0.8, "rank": False, "method": "svd", "sample_by": "blend", "anchors": anchors}
    d = distributions(space, opts, floor=0.25)
    stages = [f"prune:stage{i}" for i in (1, 2, 3)]
    assert sorted(d) == sorted(["level", "prune:uniform", "prune:global", "prune:allocator", *stages])
    assert (d["prune:stage2"].low, d["prune:stage2"].high, d["prune:stage2"].log) == (0.5, 2.0, True)
    tilts = {"prune:stage1": 1.0, "prune:stage2": 1.0, "prune:stage3": 1.0}
    one = plan_from_params(space, {"prune:uniform": 0.0, "prune:global": 0.7, "prune:allocator": 0.0, **tilts}, opts)
    assert dict(one.prune) == pytest.approx(anchors["global"])  # one weight alone: that anchor's plan
    mix = {"prune:uniform": 0.2, "prune:global": 0.0, "prune:allocator": 0.6, **tilts, "prune:stage3": 2.0}
    plan = plan_from_params(space, mix, opts)
    stage = space.stages()
    for gid in stage["stage2"]:  # 1/4 of the uniform's kept fraction and 3/4 of the third anchor's
        kept = 0.25 * (1 - anchors["uniform"].get(gid, 0)) + 0.75 * (1 - anchors["allocator"].get(gid, 0))
        assert plan.prune[gid] == pytest.approx(1 - kept)
    for gid in stage["stage3"]:  # tilt 2: the kept fraction squared
        kept = 0.25 * (1 - anchors["uniform"].get(gid, 0)) + 0.75 * (1 - anchors["allocator"].get(gid, 0))
        assert plan.prune[gid] == pytest.approx(
            min(1 - kept**2, (space.group(gid).channels - 1) / space.group(gid).channels)
        )


def test_each_anchor_round_trips_through_the_blend_params(space: ModelSpace) -> None:
    from spaces import Plan

    anchors = _anchors(space)
    opts = {"max_ratio": 0.8, "rank": False, "method": "svd", "sample_by": "blend", "anchors": anchors}
    d = distributions(space, opts)
    stages = [f"prune:stage{i}" for i in (1, 2, 3)]
    for name, ratios in anchors.items():
        back = params_from_plan(space, Plan(prune=ratios), d, opts)
        expected = {**dict.fromkeys(d, 0.0), f"prune:{name}": 1.0, **dict.fromkeys(stages, 1.0)}
        assert back == pytest.approx(expected, abs=1e-9)
        assert dict(plan_from_params(space, back, opts).prune) == pytest.approx(ratios)
    with pytest.raises(ValueError, match=r"sample_by = \"blend\" needs the anchor plans .* missing: allocator"):
        plan_from_params(
            space, dict.fromkeys(d, 1.0), {**opts, "anchors": {k: anchors[k] for k in ("uniform", "global")}}
        )


@pytest.mark.parametrize("mode", ["weights", "weights+activations"])
def test_one_bits_knob_the_share_at_four_bits_round_trips(space: ModelSpace, mode: str) -> None:
    opts = {"max_ratio": 0.8, "rank": False, "method": "svd", "quantize": mode}
    d = distributions(space, opts)
    assert (d["bits:share4"].low, d["bits:share4"].high, d["bits:share4"].step) == (0.0, 1.0, 0.125)
    assert "bits:share4" not in distributions(space, {**opts, "quantize": "none"})
    prune = {f"prune:{g.id}": 0.25 for g in space.groups}
    layers = list(space.costs.trace.spatial)  # every conv and the classifier, in forward order
    for share in (0.0, 0.5, 1.0):
        plan = plan_from_params(space, {**prune, "bits:share4": share}, opts)
        assert set(plan.bits) == set(layers)
        assert plan.bits[layers[0]] == plan.bits[layers[-1]] == 8  # the input conv and the classifier stay at 8
        assert (plan.act_bits == dict.fromkeys(layers, 8)) == (mode == "weights+activations")
        back = params_from_plan(space, plan, d, opts)
        assert back["bits:share4"] == pytest.approx(share, abs=0.125 if 0 < share < 1 else 0)
    four = [n for n, b in plan_from_params(space, {**prune, "bits:share4": 0.5}, opts).bits.items() if b == 4]
    sizes = {n: space.costs.trace.model.get_submodule(n).weight.numel() for n in layers}
    assert min(sizes[n] for n in four) >= max(sizes[n] for n in layers[1:-1] if n not in four)  # largest first


def test_the_level_parameter_spans_floor_to_cap_log_uniformly(space: ModelSpace) -> None:
    d = distributions(space, max_ratio=0.8, rank=False, method="svd", floor=0.25)
    assert (d["level"].low, d["level"].high, d["level"].log) == (0.25, 1.0, True)
    assert "level" not in distributions(space, max_ratio=0.8, rank=False, method="svd", floor=1.0)
    plan = plan_from_params(space, {"level": 0.3, **{f"prune:{g.id}": 0.1 for g in space.groups}}, method="svd")
    assert params_from_plan(space, plan, d, method="svd", level=0.1)["level"] == 0.25  # clipped to the floor


# A hand-made rung: (-accuracy, MACs), both minimised.
_RUNG = [
    [-0.90, 100.0],  # 0: front
    [-0.85, 50.0],  # 1: front
    [-0.80, 20.0],  # 2: front
    [-0.84, 60.0],  # 3: dominated by 1 only -> rank 1
    [-0.79, 30.0],  # 4: dominated by 2 -> rank 1
    [-0.70, 110.0],  # 5: dominated by 0, 1, 3 -> rank 2
    [-0.86, 55.0],  # 6: front (between 0 and 1)
]


def test_nondominated_ranks_and_crowding_on_a_hand_made_rung() -> None:
    assert nondominated_ranks(_RUNG) == [0, 0, 0, 1, 1, 2, 0]
    crowd = crowding_distance(_RUNG, [0, 1, 2, 6])
    assert crowd[0] == crowd[2] == float("inf")  # the two ends of the front
    # 6 sits between 0 and 1 (accuracy span 0.05 of 0.10, MACs span 50 of 80); 1 between 6 and 2
    assert crowd[6] == pytest.approx(0.05 / 0.10 + 50 / 80)
    assert crowd[1] == pytest.approx(0.06 / 0.10 + 35 / 80)
    assert promotion_order(_RUNG) == [0, 2, 6, 1, 3, 4, 5]  # 6 is less crowded than 1


def test_a_rung_promotes_the_best_third_by_rank_then_crowding() -> None:
    promoted = [i for i in range(len(_RUNG)) if promotes(_RUNG, i, reduction_factor=3)]
    assert promoted == [0, 2]  # 7 // 3 = 2: the front's ends, never the dominated ones
    assert [i for i in range(len(_RUNG)) if promotes(_RUNG, i, reduction_factor=2)] == [0, 2, 6]
    assert promotes(_RUNG[:1], 0, reduction_factor=3)  # the first to reach a rung goes on (asynchronous)
    assert not promotes([[-0.5, 10.0], [-0.6, 10.0]], 0, reduction_factor=3)  # dominated: stops


def test_sampled_ratios_never_empty_a_small_group() -> None:
    from evaluators import ZOO

    space = ModelSpace(ZOO["plain8"](in_channels=1, num_classes=10, base=2), torch.randn(1, 1, 32, 32))
    small = min(space.groups, key=lambda g: g.channels)
    assert small.channels == 2
    plan = plan_from_params(space, {f"prune:{g.id}": 0.8 for g in space.groups}, method="svd")
    assert space.keep_counts(plan).min() == 1  # 0.8 of 2 channels would round to 2 removed
