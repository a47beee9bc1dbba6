from __future__ import annotations

import pytest
import torch

from spaces import InputTypeError, ModelSpace, Plan, PlanError
from tests.spaces.models import MODELS


@pytest.fixture(scope="module")
def space() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(MODELS["resnet20"](), torch.randn(1, 3, 32, 32))


def test_json_round_trip_and_stable_hash() -> None:
    plan = Plan({"b": 0.25, "a": 0.5, "z": 0.0}, importance="l2", round_to=4)
    text = plan.to_json()
    assert text == '{"format": 1, "importance": "l2", "prune": {"a": 0.5, "b": 0.25}, "round_to": 4}'
    back = Plan.from_json(text)
    assert back == plan and back.to_json() == text
    assert plan.hash == Plan({"a": 0.5, "b": 0.25}, importance="l2", round_to=4).hash
    assert plan.hash != Plan({"a": 0.5, "b": 0.26}, importance="l2", round_to=4).hash
    assert len(plan.hash) == 16
    assert Plan().is_empty and Plan({"x": 0.0}).is_empty


@pytest.mark.parametrize(
    ("ratio", "message"),
    [(1.0, "must be in [0, 1)"), (-0.1, "must be in [0, 1)"), (float("nan"), "must be in [0, 1)")],
)
def test_bad_ratios(ratio: float, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Plan({"conv1": ratio})


def test_bad_plan_json() -> None:
    with pytest.raises(PlanError, match="unknown plan key"):
        Plan.from_json('{"prune": {}, "ranks": {}}')
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json("{")
    with pytest.raises(TypeError, match="must be a number"):
        Plan({"conv1": "0.5"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prune": [1, 2]}', "plan key 'prune' must be a JSON object mapping group id to ratio, got list"),
        ('{"prune": 5}', "plan key 'prune' must be a JSON object mapping group id to ratio, got int 5"),
        ('{"rank": "x"}', "plan key 'rank' must be a JSON object mapping layer to rank"),
        ('{"method": null}', "plan key 'method' must be a JSON object"),
    ],
)
def test_plan_fields_of_the_wrong_type_are_named(text: str, message: str) -> None:
    with pytest.raises(InputTypeError, match=message):
        Plan.from_json(text)


def test_validation_against_space(space: ModelSpace) -> None:
    with pytest.raises(PlanError, match="unknown group id 'nope'; the space has 12 groups"):
        space.cost(Plan({"nope": 0.5}))
    # 16 channels: 0.97 rounds to 16 pruned, which leaves the group empty
    with pytest.raises(PlanError, match="leaves group 'layer1.0.conv1' .16 channels. empty"):
        space.apply(Plan({"layer1.0.conv1": 0.97}))
    assert space.keep_counts(Plan({"layer1.0.conv1": 0.9})).min() == 2


def test_round_to(space: ModelSpace) -> None:
    plan = Plan({"layer3.0.conv1": 0.3}, round_to=8)  # 64 -> 44.8 kept -> 45 -> 48
    i = [g.id for g in space.groups].index("layer3.0.conv1")
    assert space.keep_counts(plan)[i] == 48
    assert space.apply(plan).layer3[0].conv1.out_channels == 48
