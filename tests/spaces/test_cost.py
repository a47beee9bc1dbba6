"""measure_cost against closed-form formulas (fvcore counts conv + linear only)."""

from __future__ import annotations

import torch
from torch import nn

from spaces import Cost, ModelSpace, Plan, measure_cost


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.fc = nn.Linear(8 * 5 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.dw(x).flatten(1))


def test_measure_cost_exact_formulas() -> None:
    model = Tiny()
    cost = measure_cost(model, torch.randn(2, 3, 10, 10))
    conv = 2 * 10 * 10 * 8 * 3 * 3 * 3  # N*H*W*Cout*Cin*k*k
    dw = 2 * 5 * 5 * 8 * 1 * 3 * 3  # groups=8: Cin/groups = 1
    fc = 2 * 200 * 4
    assert cost.macs == conv + dw + fc
    params = (8 * 3 * 9 + 8) + (8 + 8) + 8 * 9 + (200 * 4 + 4)
    assert cost.params == params
    assert cost.bytes == 4 * params
    # what fvcore skipped is reported, not counted as zero silently
    assert cost.skipped_ops.get("aten::batch_norm") == 1


def test_flatten_into_linear_is_costed_exactly() -> None:
    model = Tiny().eval()
    x = torch.randn(1, 3, 10, 10)
    space = ModelSpace(model, x)
    assert [g.id for g in space.groups] == ["conv"]
    (g,) = space.groups
    assert g.layers == ("conv", "bn", "dw", "fc")
    plan = Plan({"conv": 0.5})
    pruned = space.apply(plan)
    assert pruned.fc.in_features == 4 * 25  # 4 kept channels x 5x5 positions
    assert space.cost(plan) == measure_cost(pruned, x)
    expected = Cost(
        macs=10 * 10 * 4 * 27 + 5 * 5 * 4 * 9 + 100 * 4,
        params=(4 * 27 + 4) + 8 + 4 * 9 + (100 * 4 + 4),
        bytes=4 * ((4 * 27 + 4) + 8 + 4 * 9 + (100 * 4 + 4)),
    )
    assert space.cost(plan) == expected


def test_cost_ratio() -> None:
    a, b = Cost(50, 10, 40), Cost(100, 40, 160)
    assert a.ratio(b) == {"macs": 0.5, "params": 0.25, "bytes": 0.25}
