"""Models the space must refuse, and bad input: one-line errors, never a wrong model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaces import ModelSpace, UnsupportedModelError
from tests.spaces.models import MODELS


class HiddenConv(nn.Module):
    """Calls a layer's weight through F.conv2d outside the module: hooks miss it, and the space does not follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.proj = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.conv(x), self.proj.weight, self.proj.bias)
        return self.head(x.mean((2, 3)))


def test_ops_outside_modules_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="where the space cannot see them"):
        ModelSpace(HiddenConv(), torch.randn(1, 3, 8, 8))


def test_wrong_example_input_is_one_line_value_error() -> None:
    with pytest.raises(ValueError, match=r"example_inputs of shape \(1, 1, 32, 32\) do not fit the model") as e:
        ModelSpace(MODELS["resnet20"](), torch.randn(1, 1, 32, 32))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"importance": "gradient"}, ValueError, "importance must be one of"),
        ({"round_to": 0}, ValueError, "round_to must be an integer >= 1"),
        ({"ignored_layers": ["nope"]}, ValueError, "ignored layer 'nope' is not a submodule"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        ModelSpace(MODELS["resnet20"](), torch.randn(1, 3, 32, 32), **kwargs)


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        ModelSpace({}, torch.randn(1, 3, 32, 32))  # type: ignore[arg-type]


def test_ignored_layers_are_not_pruned() -> None:
    model = MODELS["resnet20"]()
    space = ModelSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=[model.layer3[0].conv1])
    assert "layer3.0.conv1" not in {g.id for g in space.groups}
    assert space.ignored_layers == ("layer3.0.conv1", "fc")
