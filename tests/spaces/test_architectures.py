"""The surgery + cost contract over every supported architecture."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision

from spaces import ModelSpace, Plan, check_cost, measure_cost
from spaces.dimensions._bits import quantizable_layers
from spaces.graph._verify import scrambled
from tests.spaces.models import ARCHS

_CACHE: dict[str, tuple[torch.nn.Module, torch.Tensor, ModelSpace]] = {}


def _space(name: str) -> tuple[torch.nn.Module, torch.Tensor, ModelSpace]:
    if name not in _CACHE:
        torch.manual_seed(0)
        factory, size = ARCHS[name]
        model = factory().eval()
        x = torch.randn(2, 3, size, size)
        _CACHE[name] = (model, x, ModelSpace(model, x))
    return _CACHE[name]


@pytest.mark.parametrize("name", list(ARCHS))
def test_empty_plan_reproduces_outputs_and_model_untouched(name: str) -> None:
    model, x, space = _space(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(space.groups) > 0
    with torch.no_grad():
        ref = model(x)
        out = space.apply(Plan())(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert space.cost(Plan()) == measure_cost(model, x) == space.base_cost
    for k, v in model.state_dict().items():  # the caller's model is never modified
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_plans_cost_equals_measured(name: str) -> None:
    _model, x, space = _space(name)
    rng = random.Random(name)
    for _ in range(2):
        plan = Plan({g.id: rng.uniform(0.0, 0.9) for g in space.groups if rng.random() < 0.8})
        pruned = space.apply(plan)
        with torch.no_grad():
            y = pruned(x)
        assert y.shape == (2, 10)
        assert torch.isfinite(y).all()
        predicted = space.cost(plan)
        measured = measure_cost(pruned, x)
        assert predicted == measured
        assert predicted.params == sum(p.numel() for p in pruned.parameters())
        assert predicted.macs < space.base_cost.macs


@pytest.mark.parametrize("name", list(ARCHS))
def test_factorized_and_joint_plans_cost_equals_measured(name: str) -> None:
    _, x, space = _space(name)
    rng = random.Random(name + "rank")
    assert space.layers, "every architecture has factorizable layers"
    layers = rng.sample(space.layers, min(6, len(space.layers)))
    plan = Plan(
        prune={g.id: rng.uniform(0.0, 0.7) for g in space.groups if rng.random() < 0.5},
        rank={layer.name: rng.uniform(0.1, 0.9) for layer in layers},
        method={layer.name: rng.choice(layer.methods) for layer in layers},
    )
    pruned = space.apply(plan)
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert space.cost(plan) == measure_cost(pruned, x)
    assert space.cost(plan).macs < space.cost(Plan(prune=plan.prune)).macs


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_bit_plans_cost_equals_measured(name: str) -> None:
    """Bits on random layers (some with 8-bit inputs), beside pruning and ranks on others: bytes exact, MACs kept."""
    _, x, space = _space(name)
    rng = random.Random(name + "bits")
    layers = list(quantizable_layers(space.costs))
    bits = {n: rng.choice((4, 8)) for n in layers if rng.random() < 0.6}
    ranked = [g for g in space.layers if g.name not in bits][:2]
    plan = Plan(
        prune={g.id: rng.uniform(0.0, 0.7) for g in space.groups if rng.random() < 0.5},
        rank={g.name: 0.5 for g in ranked},
        bits=bits,
        act_bits={n: 8 for n in bits if rng.random() < 0.5},
    )
    model = space.apply(plan).train()
    with torch.no_grad():
        model(x)  # calibrates the input ranges
        y = model.eval()(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    cost = space.cost(plan)
    assert cost == measure_cost(model, x)
    without = space.cost(plan.replace(bits={}, act_bits={}))
    assert (cost.macs, cost.params) == (without.macs, without.params) and cost.bytes < without.bytes


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "densenet121", "googlenet", "efficientnet_b0"])
def test_pruned_equals_masked_original(name: str) -> None:
    """Pruning = zeroing the same channels in the original (no index is mismatched)."""
    _, x, space = _space(name)
    plan = space.uniform_plan(0.6)
    vmodel = scrambled(space.model)  # untrained torchvision models ignore most channels
    with torch.no_grad():
        pruned = space.apply(plan, model=vmodel)(x)
        masked = space.masked_model(plan, model=vmodel)(x)
        base = vmodel(x)
    scale = float(base.abs().max())
    assert float((masked - base).abs().max()) > 1e-2 * scale  # the test is not vacuous
    assert float((pruned - masked).abs().max()) <= 1e-5 * scale


def test_excluded_groups_are_named_with_reasons() -> None:
    _, _, shuffle = _space("shufflenet_v2_x1_0")
    _, _, regnet = _space("regnet_y_400mf")
    assert any("not the ones removed" in r or "fails" in r for r in shuffle.excluded.values())
    assert any("grouped convolution" in r for r in regnet.excluded.values())
    for space in (shuffle, regnet):
        ids = {g.id for g in space.groups}
        assert not ids & set(space.excluded)


def test_classifier_is_never_pruned() -> None:
    _, _, space = _space("resnet18")
    assert space.ignored_layers == ("fc",)
    assert all("fc" not in g.layers or g.layers[-1] == "fc" for g in space.groups)
    _, _, sq = _space("squeezenet1_1")
    assert sq.ignored_layers == ("classifier.1",)  # a 1x1 conv classifier


def test_a_model_with_its_own_state_dict_loading_hook_is_verified() -> None:
    """MNASNet's _load_from_state_dict demands a version: the self-check restores masked weights in place."""
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    space = ModelSpace(model, x)
    assert len(space.groups) == 25 and not space.excluded
    plan = space.uniform_plan(0.5)
    assert check_cost(space, plan) is None


@pytest.mark.parametrize("name", list(ARCHS))
def test_the_self_check_leaves_the_spaces_model_as_the_users(name: str) -> None:
    """The self-check prunes copies that share the space's tensors (no data copied): none was written."""
    model, _x, space = _space(name)
    mine = space.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(mine[k], v), k


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny", "mobilenet_v2", "densenet121", "convnext_tiny"])
def test_shape_only_probes_find_the_dimensions_a_real_copy_does(name: str) -> None:
    """CostModel.param_dims probes a pruning function on a meta-tensor copy: the same (parameter, dim) pairs."""
    import copy

    _model, _x, space = _space(name)
    model = space.model
    for items in space.costs.trace.items:
        for it in items:
            if it.is_param:
                p = model.get_parameter(it.target)
                new = it.handler(torch.nn.Parameter(p.detach().clone()), [0])
                real = [(it.target, d) for d, (a, b) in enumerate(zip(p.shape, new.shape, strict=False)) if a != b]
            else:
                mod = model.get_submodule(it.target)
                before = {n: tuple(p.shape) for n, p in mod.named_parameters(recurse=False)}
                probe = copy.deepcopy(mod)
                it.handler(probe, [0])
                real = [
                    (f"{it.target}.{n}" if it.target else n, d)
                    for n, p in probe.named_parameters(recurse=False)
                    for d, (a, b) in enumerate(zip(before[n], p.shape, strict=False))
                    if a != b
                ]
            assert space.costs.param_dims(it) == real, (it.target, it.handler)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_a_probe_on_a_pruned_copy_builds_what_the_whole_plan_builds(name: str) -> None:
    """Surgery.apply(done=): the self-check applies each dimension's probe on top of one half-pruned model."""
    from spaces.dimensions import dimensions
    from spaces.graph._verify import shared_copy

    _model, x, space = _space(name)
    half = space.uniform_plan(0.5)
    entries = {k: v for dim in dimensions() for k, v in dim.verify_probe(space.costs).items()}
    assert entries.get("rank") and entries.get("bits")
    probe = half.replace(rank=entries["rank"], method=entries["method"])
    whole = space.apply(probe)
    on_top = space._surgery.apply(shared_copy(space.apply(half)), probe, done=half)
    assert [(n, p.shape) for n, p in on_top.named_parameters()] == [(n, p.shape) for n, p in whole.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(on_top(x), whole(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'rank' differs"):
        space._surgery.apply(shared_copy(whole), half.replace(rank={}, method={}), done=probe)


def test_a_surgery_writing_in_place_into_a_shared_copy_is_caught() -> None:
    from spaces.graph._verify import SharedTensorWritten, shared_copy, untouched

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(SharedTensorWritten, match="wrote into 2 tensors"), torch.no_grad(), untouched(model):
        twin = shared_copy(model)
        assert twin is not model and twin[0].weight is model[0].weight
        twin[0].weight.mul_(2)
        twin[1].running_mean.add_(1)
    with pytest.raises(SharedTensorWritten, match="wrote into 1 tensors"), untouched(model):
        shared_copy(model)[0].weight.data = torch.zeros(2, 3)  # the shared parameter's storage replaced
    with untouched(model):  # assigning new tensors to the copy is what surgery does: allowed
        shared_copy(model)[0].weight = torch.nn.Parameter(torch.zeros(2, 3))


class _HookScaled(torch.nn.Module):
    """A block whose forward hook, a bound method, reads its own conv's width: pruning that conv changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.register_forward_hook(self._scale)

    def _scale(self, module: torch.nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor:
        return out * 8 / self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv(x))))


def test_a_hook_bound_to_a_module_is_checked_on_the_copy_the_space_returns() -> None:
    """The self-check's copies re-bind a bound-method hook to the copy, as ModelSpace.apply's deep copy does, so
    the group whose pruning the hook sees is checked as it will run (and excluded), not passed on the original."""
    from spaces.graph._verify import shared_copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(_HookScaled(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    twin = shared_copy(model)
    (hook,) = twin[0]._forward_hooks.values()
    assert hook.__self__ is twin[0] and twin[0].conv.weight is model[0].conv.weight
    space = ModelSpace(model.eval(), torch.randn(2, 3, 8, 8))
    assert "not the ones removed" in space.excluded["0.conv"]
    assert [g.id for g in space.groups] == ["0.conv2"]
