"""The largest channels survive, and the next layer's inputs match (not the tutorial's bug)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from spaces import Budget, ModelSpace, Plan, PlanError
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


# ---------------------------------------------------------------------- every criterion, on weights the test sets
def _tiny() -> nn.Module:
    """conv1 (3 -> 4) + BN, then conv2 (4 -> 2) + BN, pooled into a linear classifier: conv1's group has
    a producer (conv1), a BatchNorm (bn1) and a consumer (conv2's input slices)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 10),
    ).eval()
    a, b, g = [8.0, 6.0, 4.0, 2.0], [0.0, 1.0, 2.0, 30.0], [0.1, 0.2, 0.3, 0.4]
    with torch.no_grad():  # per channel c: conv1's filter L1 a[c], conv2's input slice L1 b[c], |gamma| g[c]
        model[0].weight.copy_(torch.tensor(a).view(4, 1, 1, 1).expand(4, 3, 3, 3) / 27)
        model[3].weight.copy_(torch.tensor(b).view(1, 4, 1, 1).expand(2, 4, 3, 3) / 18)
        model[1].weight.copy_(torch.tensor(g))
    return model


# the two channels each criterion keeps of conv1's four, from the formulas (a, b, g as set in _tiny):
#   l1, l2: the producer only (a)                              -> 0, 1
#   bn_scale: gamma (g)                                         -> 2, 3
#   group_l1: (a + b + g) / 3 = 2.7, 2.4, 2.1, 10.8             -> 0, 3
#   group_l2, lamp: (a^2/27 + b^2/18 + g^2) / 3 = .79, .48, .30, 16.8 -> 0, 3
KEPT = {"l1": [0, 1], "l2": [0, 1], "bn_scale": [2, 3], "group_l1": [0, 3], "group_l2": [0, 3], "lamp": [0, 3]}


@pytest.mark.parametrize("criterion", sorted(KEPT))
def test_each_criterion_keeps_the_channels_it_ranks_highest(criterion: str) -> None:
    model = _tiny()
    space = ModelSpace(model, torch.randn(1, 3, 8, 8), importance=criterion)
    pruned = space.apply(Plan({"0": 0.5}))
    keep = torch.tensor(KEPT[criterion])
    torch.testing.assert_close(pruned[0].weight, model[0].weight[keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[1].weight, model[1].weight[keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[3].weight, model[3].weight[:, keep], rtol=0, atol=0)
    if criterion == "group_l1":
        scores = space.scores.of(space.costs.group_index("0"), criterion)
        np.testing.assert_allclose(scores, [2.7, 2.4, 2.1, 10.8], rtol=1e-6)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)]


def _by_channel(model: nn.Module, grads: dict[str, torch.Tensor], square: bool) -> np.ndarray:
    """Per channel of conv1's group, the mean over its three members of sum |w * dL/dw| (Taylor) or
    sum w^2 * H (Hessian, H the mean per-sample squared gradient), as the module docs say."""
    p = 2 if square else 1
    conv1 = (model[0].weight.abs().pow(p) * grads["0.weight"]).abs().flatten(1).sum(1)
    conv2 = (model[3].weight.abs().pow(p) * grads["3.weight"]).abs().transpose(0, 1).flatten(1).sum(1)
    bn = (model[1].weight.abs().pow(p) * grads["1.weight"]).abs()
    return ((conv1 + conv2 + bn) / 3).detach().double().numpy()


def test_taylor_and_hessian_follow_their_formulas_and_leave_the_model_as_it_was() -> None:
    model = _tiny()
    space = ModelSpace(model, torch.randn(1, 3, 8, 8), importance="taylor")
    index = space.costs.group_index("0")
    with pytest.raises(PlanError, match="importance 'taylor' needs calibration batches first"):
        space.apply(Plan({"0": 0.5}))
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    ref = copy.deepcopy(model)
    loss = sum(nn.functional.cross_entropy(ref(x), y) for x, y in _batches())
    taylor = dict(
        zip(
            ["0.weight", "1.weight", "3.weight"],
            torch.autograd.grad(loss, [ref[0].weight, ref[1].weight, ref[3].weight]),
            strict=True,
        )
    )
    got = space.calibrate_importance("taylor", _batches())
    np.testing.assert_allclose(got["0"], _by_channel(ref, taylor, square=False), rtol=1e-5)
    hess = {k: torch.zeros_like(v) for k, v in taylor.items()}
    samples = [(x[i : i + 1], y[i : i + 1]) for x, y in _batches() for i in range(len(x))]
    for x, y in samples:
        per = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), [ref[0].weight, ref[1].weight, ref[3].weight])
        for k, g in zip(hess, per, strict=True):
            hess[k] += g.pow(2) / len(samples)
    space.calibrate_importance("hessian", _batches())
    np.testing.assert_allclose(space.scores.of(index, "hessian"), _by_channel(ref, hess, square=True), rtol=1e-4)
    after = space.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert all(p.grad is None for p in space.model.parameters())
    keep = torch.tensor(sorted(np.argsort(-got["0"], kind="stable")[:2].tolist()))
    pruned = space.apply(Plan({"0": 0.5}))  # taylor, the space's criterion, now calibrated
    torch.testing.assert_close(pruned[0].weight, model[0].weight[keep], rtol=0, atol=0)
    other = ModelSpace(model, torch.randn(1, 3, 8, 8), importance="taylor")
    other.load_importance("taylor", got)  # scores computed once, read back: the same channels
    torch.testing.assert_close(other.apply(Plan({"0": 0.5}))[0].weight, pruned[0].weight, rtol=0, atol=0)


def test_the_global_ranking_prunes_the_group_whose_channels_matter_least_relative_to_its_own() -> None:
    """Group "0" has four equal channels (each 1.0 of its mean); group "2" has three weak ones (0.1 of its mean)
    and a strong one. Ranked together, each group divided by its mean, group "2"'s weak channels go first;
    the uniform plan at the same budget shrinks both groups."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight.copy_(torch.full((4, 3, 3, 3), 10.0 / 27))
        model[2].weight.copy_(torch.tensor([1.0, 1.0, 1.0, 37.0]).view(4, 1, 1, 1).expand(4, 4, 3, 3) / 36)
    space = ModelSpace(model, torch.randn(1, 3, 8, 8))
    limit = space.costs.cost_at(Plan(), np.array([4, 1])).macs  # exactly group "2"'s three weak channels gone
    plan = space.global_plan(Budget(macs=limit))
    assert list(space.keep_counts(plan)) == [4, 1]
    assert list(space.keep_counts(space.fit(space.uniform_plan(0.0), Budget(macs=limit)))) != [4, 1]
