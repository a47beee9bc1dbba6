"""Support rows: the shared analytic = measured check, the sampler's plans, and one model per family checked exact.

The CI subset runs :func:`spaces.support` (the row of the support tables,
``bench/bench_space.py --sweep`` and ``scripts/support_matrix.py``) on one
small model per torchvision and timm family, at 32x32 where the family takes
it, with three plans (the sampler's most aggressive, a random one with ranks,
a random one without); the tables check five or more per model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.vision_transformer import VisionTransformer

from search._config import SpaceConfig
from spaces import Cost, ModelSpace, Plan, PlanCheck, Support, check_cost, support
from spaces._support import aggressive_plan, cost_difference, reason_kind, sampled_plans
from tests.spaces.models import MODELS

OPTIONS = SpaceConfig.model_validate({"rank": {}}).options()  # the study's defaults, ranks searched
CI_PLANS = 3


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # the timm extra (installed by scripts/install.sh, as in CI)

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


# family -> (a small model of it, input size): torchvision's own classes, smaller where the named model is large
TORCHVISION: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet": (_tv("resnet18"), 32),
    "resnext": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, groups=32, width_per_group=4), 32),
    "mobilenet_v2": (_tv("mobilenet_v2", width_mult=0.5), 32),
    "mobilenet_v3": (_tv("mobilenet_v3_small"), 32),
    "efficientnet": (_tv("efficientnet_b0"), 32),
    "regnet": (_tv("regnet_x_400mf"), 32),
    "densenet": (lambda: DenseNet(12, (2, 2, 2), 24, num_classes=10), 32),
    "shufflenet": (_tv("shufflenet_v2_x0_5"), 32),
    "squeezenet": (_tv("squeezenet1_1"), 32),
    "mnasnet": (_tv("mnasnet0_5"), 32),
    "vit": (lambda: VisionTransformer(32, 8, 2, 4, 64, 128, num_classes=10), 32),
    "swin": (lambda: SwinTransformer([4, 4], 24, [2, 2], [2, 4], [4, 4], num_classes=10), 32),
    "swin_v2": (
        lambda: SwinTransformer(
            [4, 4],
            24,
            [2, 2],
            [2, 4],
            [4, 4],
            num_classes=10,
            block=SwinTransformerBlockV2,
            downsample_layer=PatchMergingV2,
        ),
        32,
    ),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10), 32),
}
TIMM: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet": (_timm("resnet18"), 32),
    "resnext": (_timm("resnext26ts"), 32),
    "regnet": (_timm("regnetx_002"), 32),
    "efficientnet": (_timm("efficientnet_b0"), 32),
    "mobilenetv3": (_timm("mobilenetv3_small_050"), 32),
    "mobilevit": (_timm("mobilevit_xxs"), 64),
    "convnext": (_timm("convnext_atto"), 32),
    "vit": (_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "deit": (_timm("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "swin": (_timm("swin_tiny_patch4_window7_224", img_size=32, window_size=4, depths=(1, 1), num_heads=(1, 2)), 32),
    "maxvit": (_timm("maxvit_tiny_tf_224", img_size=64, depths=(1, 1, 1, 1), embed_dim=(32, 64, 96, 128)), 64),
}
# not in the CI subset: levit (torch-pruning's group propagation takes minutes on its attention reshapes, at
# any input size; scripts/support_matrix.py checks it at 224)
# the prunable groups of all groups each CI model has (what the support tables print as "k of n")
GROUPS = {
    ("torchvision", "resnet"): (12, 12),
    ("torchvision", "resnext"): (5, 13),
    ("torchvision", "regnet"): (5, 49),
    ("torchvision", "shufflenet"): (18, 34),
    ("torchvision", "vit"): (4, 5),
    ("torchvision", "swin_v2"): (0, 6),
}


@pytest.fixture(scope="module")
def resnet20() -> ModelSpace:
    torch.manual_seed(0)
    return ModelSpace(MODELS["resnet20"]().eval(), torch.randn(1, 3, 32, 32))


def test_check_cost_is_none_when_exact_and_names_what_differs(resnet20: ModelSpace) -> None:
    plan = resnet20.uniform_plan(0.5)
    assert check_cost(resnet20, plan) is None
    analytic = resnet20.cost(plan)
    # a batch of two measures twice the MACs the space (costed for one image) predicts; weights are the same
    assert check_cost(resnet20, plan, torch.randn(2, 3, 32, 32)) == (
        f"macs: analytic {analytic.macs}, measured {2 * analytic.macs}"
    )


def test_cost_difference_lists_every_figure_that_differs() -> None:
    assert cost_difference(Cost(10, 5, 20), Cost(10, 5, 20)) is None
    assert cost_difference(Cost(10, 5, 20), Cost(10, 6, 24)) == (
        "params: analytic 5, measured 6; bytes: analytic 20, measured 24"
    )


def test_the_most_aggressive_plan_is_every_sampler_parameter_at_its_cheaper_end(resnet20: ModelSpace) -> None:
    plan = aggressive_plan(resnet20, OPTIONS)
    high = OPTIONS["max_ratio"]
    assert high == 0.8  # the study's default max_ratio: the largest prune ratio the sampler proposes
    assert plan.prune == {g.id: min(high, (g.channels - 1) / g.channels) for g in resnet20.groups}
    factorized = {layer.name: max(1, round(0.1 * layer.max_useful_rank("svd"))) for layer in resnet20.layers}
    assert plan.rank == {n: r for n, r in factorized.items() if r < resnet20.layer(n).max_useful_rank("svd")}
    assert len(plan.rank) > 10
    cheapest = resnet20.cost(plan).macs
    others = [resnet20.cost(p).macs for _, p in sampled_plans(resnet20, OPTIONS, 6)[1:]]
    assert all(cheapest < macs for macs in others), (cheapest, others)


def test_sampled_plans_alternate_ranks_and_repeat_for_a_seed(resnet20: ModelSpace) -> None:
    plans = sampled_plans(resnet20, OPTIONS, 5, seed=3)
    labels = [label for label, _ in plans]
    assert labels == ["most aggressive", "random 1 + ranks", "random 2", "random 3 + ranks", "random 4"]
    assert [bool(p.rank) for _, p in plans] == [True, True, False, True, False]
    ratios = [sorted(p.prune.values()) for _, p in plans[1:]]
    assert len({tuple(r) for r in ratios}) == 4 and all(0 <= r <= 0.8 for rs in ratios for r in rs)
    assert sampled_plans(resnet20, OPTIONS, 5, seed=3) == plans
    assert [bool(p.rank) for _, p in sampled_plans(resnet20, {**OPTIONS, "rank": False}, 3)] == [False] * 3
    with pytest.raises(ValueError, match="count must be at least 1 .*got 0"):
        sampled_plans(resnet20, OPTIONS, 0)


def test_reason_kinds_name_why_groups_are_excluded() -> None:
    torch.manual_seed(0)
    space = ModelSpace(TORCHVISION["resnext"][0]().eval(), torch.randn(1, 3, 32, 32))
    assert {reason_kind(r) for r in space.excluded.values()} == {"grouped conv"}
    assert reason_kind("pruned channels are not the ones removed downstream (max error 0.3)") == (
        "wrong channels removed downstream"
    )
    assert reason_kind("something new: with details") == "something new"


def test_a_row_says_what_was_checked() -> None:
    fine = PlanCheck("most aggressive", Plan(), None)
    bad = PlanCheck("random 1", Plan(), "macs: analytic 1, measured 2")
    row = Support(5, 37, {"grouped conv": 30, "pruned model fails": 2}, 38, 54, 0, 0, (fine, bad, fine))
    assert row.cells() == [
        "5 of 37",
        "grouped conv: 30, pruned model fails: 2",
        "38 of 54",
        "n/a",
        "2/3 exact; random 1: macs: analytic 1, measured 2",
    ]
    assert Support(1, 1, {}, 0, 0, 1, 2, (fine,)).cells()[3:] == ["yes (1 of 2)", "1/1 exact"]
    assert Support(1, 1, {}, 0, 0, 0, 2, ()).heads == "no (0 of 2)"


def _check_family(library: str, family: str, build: Callable[[], nn.Module], size: int) -> None:
    torch.manual_seed(0)
    space = ModelSpace(build().eval(), torch.randn(1, 3, size, size))
    row = support(space, OPTIONS, CI_PLANS)
    assert row.exact == len(row.checks) == CI_PLANS, f"{library} {family}: {row.checked}"
    assert row.checks[0].label == "most aggressive" and row.checks[0].plan.prune.keys() == {g.id for g in space.groups}
    assert row.groups + sum(row.excluded.values()) == row.all_groups >= 1
    assert row.factorizable == len(space.layers) and row.layers >= row.factorizable
    if (library, family) in GROUPS:
        assert (row.groups, row.all_groups) == GROUPS[library, family], row.cells()


@pytest.mark.parametrize("family", list(TORCHVISION))
def test_torchvision_family_row_is_exact(family: str) -> None:
    _check_family("torchvision", family, *TORCHVISION[family])


@pytest.mark.parametrize("family", list(TIMM))
def test_timm_family_row_is_exact(family: str) -> None:
    _check_family("timm", family, *TIMM[family])
