"""The largest channels survive, and the next layer's inputs match (not the tutorial's bug)."""

from __future__ import annotations

import pytest
import torch

from spaces import ModelSpace, Plan
from tests.spaces.models import MODELS


def test_largest_l1_channels_survive_and_next_layer_matches() -> None:
    torch.manual_seed(0)
    model = MODELS["plain8"](base=4).eval()
    conv, nxt = model.features[2], model.features[5]  # 4 -> 8 channels, then 8 -> 16
    norms = torch.tensor([3.0, 9.0, 1.0, 7.0, 2.0, 8.0, 4.0, 6.0])
    with torch.no_grad():
        w = torch.randn_like(conv.weight).abs() + 0.1
        conv.weight.copy_(w / w.flatten(1).sum(1).view(-1, 1, 1, 1) * norms.view(-1, 1, 1, 1))
    space = ModelSpace(model, torch.randn(1, 3, 32, 32))
    pruned = space.apply(Plan({"features.2": 0.5}))
    keep = torch.tensor([1, 3, 5, 7])  # norms 9, 7, 8, 6: the four largest, in original order
    pc, pn = pruned.features[2], pruned.features[5]
    assert pc.out_channels == 4 and pn.in_channels == 4
    torch.testing.assert_close(pc.weight, conv.weight[keep], rtol=0, atol=0)
    torch.testing.assert_close(pc.bias, conv.bias[keep], rtol=0, atol=0)
    torch.testing.assert_close(pn.weight, nxt.weight[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(pn.bias, nxt.bias, rtol=0, atol=0)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_batchnorm_kept_consistent(importance: str) -> None:
    torch.manual_seed(0)
    model = MODELS["resnet20"]().eval()
    bn = model.layer2[0].bn1
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.1, 3.2, 32))
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    space = ModelSpace(model, torch.randn(1, 3, 32, 32), importance=importance)
    pruned = space.apply(Plan({"layer2.0.conv1": 0.25}))
    pbn, pconv, nconv = pruned.layer2[0].bn1, pruned.layer2[0].conv1, pruned.layer2[0].conv2
    conv = model.layer2[0].conv1
    # recover which channels were kept from the conv weights
    kept = [int((conv.weight - w).flatten(1).abs().sum(1).argmin()) for w in pconv.weight]
    assert len(kept) == 24 and kept == sorted(kept)
    idx = torch.tensor(kept)
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(pbn, name), getattr(bn, name)[idx], rtol=0, atol=0)
    torch.testing.assert_close(nconv.weight, model.layer2[0].conv2.weight[:, idx], rtol=0, atol=0)
    if importance == "bn_scale":  # gamma rises with the index: the last 24 survive
        assert kept == list(range(8, 32))
    else:
        scores = conv.weight.detach().abs().pow(2 if importance == "l2" else 1).flatten(1).sum(1)
        assert set(kept) == set(scores.argsort(descending=True)[:24].tolist())
