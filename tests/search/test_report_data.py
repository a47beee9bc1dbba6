"""The report's model-dependent data frames (search/operations/_report_data.py), against the space's own counts."""

from __future__ import annotations

import torch

from evaluators import build_model
from search.operations._report_data import filters_frame, structure_frame
from spaces import ModelSpace


def _space() -> ModelSpace:
    model = build_model("zoo:resnet20", in_channels=1, num_classes=10).eval()
    return ModelSpace(model, torch.zeros(1, 1, 8, 8), verify=False)


def test_the_marked_filters_are_exactly_those_the_plan_removes() -> None:
    space = _space()
    plan = space.uniform_plan(0.5)
    df = filters_frame(space, plan)
    keep = dict(zip((g.id for g in space.groups), space.keep_counts(plan), strict=True))
    for group in space.groups:
        for layer in group.outputs:
            rows = df[df["layer"] == layer]
            assert len(rows) == group.channels
            assert int(rows["pruned"].sum()) == group.channels - keep[group.id], layer
    weight = space.model.get_parameter("conv1.weight")
    assert df[df["layer"] == "conv1"]["l1"].tolist() == weight.abs().flatten(1).sum(1).tolist()
    assert list(dict.fromkeys(df["layer"]))[:2] == ["conv1", "layer1.0.conv1"]  # in the model's order


def test_the_structure_holds_kept_channels_and_ranks_per_plan() -> None:
    space = _space()
    half = space.uniform_plan(0.5)
    df = structure_frame(space, {"none": space.uniform_plan(0.0), "half": half})
    channels = df[df["what"] == "kept channels"]
    assert (channels[channels["plan"] == "none"]["fraction"] == 1.0).all()
    got = channels[channels["plan"] == "half"].set_index("unit")["kept"].to_dict()
    assert got == {g.id: int(k) for g, k in zip(space.groups, space.keep_counts(half), strict=True)}
    ranks = df[df["what"] == "rank"]
    assert set(ranks["unit"]) == {geom.name for geom in space.layers} and (ranks["fraction"] == 1.0).all()


def test_a_factorized_layer_shows_the_rank_it_keeps() -> None:
    from spaces import Plan

    space = _space()
    plan = Plan(rank={"layer3.0.conv2": 4})
    [method, ranks] = space.resolved_ranks(plan)["layer3.0.conv2"]
    df = structure_frame(space, {"low-rank": plan})
    row = df[(df["what"] == "rank") & (df["unit"] == "layer3.0.conv2")].iloc[0]
    assert row["kept"] == sum(ranks) and row["total"] == sum(space.layer("layer3.0.conv2").full_ranks(method))
    assert 0 < row["fraction"] < 1
