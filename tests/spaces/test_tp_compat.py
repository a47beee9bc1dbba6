"""The torch-pruning shim: ShuffleNet traces, split sizes are read from the renamed attribute."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch_pruning._helpers import _HybridIndex as _Index

from spaces import PruneTuneError
from spaces.graph import _tp_compat

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_torch_pruning_is_the_version_the_shims_were_tested_against() -> None:
    """Fails loudly on another torch-pruning: the shims patch its internals (re-test them, then add the version)."""
    installed = importlib.metadata.version("torch-pruning")
    assert installed in _tp_compat.SUPPORTED_VERSIONS, f"torch-pruning {installed} is not one _tp_compat supports"
    _tp_compat.check_version()  # no error


def test_another_torch_pruning_version_is_refused_in_one_line() -> None:
    with pytest.raises(_tp_compat.TorchPruningVersionError) as info:
        _tp_compat.check_version("1.5.2")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, PruneTuneError) and isinstance(info.value, ImportError)
    assert "torch-pruning 1.5.2 is installed" in message and "torch-pruning==1.6.1" in message


def test_pyproject_and_constraints_pin_the_supported_version() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.startswith("torch-pruning")]
    assert pins == [f"torch-pruning=={v}" for v in _tp_compat.SUPPORTED_VERSIONS]
    constraints = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert f"torch-pruning=={_tp_compat.SUPPORTED_VERSIONS[-1]}" in constraints


def test_self_sizes_reads_the_renamed_attribute() -> None:
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    view = x.view(1, 2, 2, 2, 2)
    assert not hasattr(view.grad_fn, "_saved_self_sizes")  # why the shim exists
    assert _tp_compat._self_sizes(view.grad_fn) == (1, 4, 2, 2)


def test_shufflenet_traces_and_groups_with_the_shim() -> None:
    _tp_compat.install()
    model = torchvision.models.shufflenet_v2_x1_0(num_classes=10).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)
    groups = list(dg.get_all_groups(ignored_layers=[model.fc]))
    assert len(groups) == 34
    chunk_nodes = [n for n in dg.module2node.values() if n.type == tp.ops.OPTYPE.SPLIT]
    assert chunk_nodes and all(n.module.split_sizes[0] == n.module.split_sizes[1] for n in chunk_nodes)


def test_the_library_hessian_accumulation_keeps_only_the_last_sample() -> None:
    """Why ``spaces.policy._importance`` averages the per-sample squared gradients itself: torch-pruning 1.6's
    ``GroupHessianImportance.accumulate_grad`` checks a parameter's *name* against keys that are parameters,
    so every sample overwrites the last. (If this fails, the library was fixed: its own accumulation may do.)"""
    layer = torch.nn.Linear(3, 2)
    imp = tp.importance.GroupHessianImportance()
    grads = []
    for seed in (0, 1):
        layer.zero_grad()
        layer(torch.randn(1, 3, generator=torch.Generator().manual_seed(seed))).sum().backward()
        grads.append(layer.weight.grad.clone())
        imp.accumulate_grad(layer)
    assert torch.equal(imp._accu_grad[layer.weight], grads[1].pow(2))  # not grads[0]^2 + grads[1]^2
    assert imp._counter[layer.weight] == 1


def _members(group: object) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(dep.target.name, dep.handler.__name__, tuple(int(i) for i in idxs)) for dep, idxs in group]


def _library(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning's own functions back in place, for a reference run (undone at the test's end)."""
    from torch_pruning.dependency import group, index_mapping

    monkeypatch.setattr(index_mapping, "update_index_mapping", _tp_compat.LIBRARY["update_index_mapping"])
    monkeypatch.setattr(group.Group, "has_pruning_op", _tp_compat.LIBRARY["has_pruning_op"])
    monkeypatch.setattr(group.Group, "add_and_merge", _tp_compat.LIBRARY["add_and_merge"])


def test_all_groups_are_the_librarys_groups_with_mappings_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """all_groups computes the graph's index mappings once (the library recomputes them for every root) and
    finds items through an index: the groups are the unpatched library's, member for member, in order."""
    _tp_compat.install()
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()  # concatenations, splits, a shuffle
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)
    roots = (torch.nn.Conv2d, torch.nn.Linear)
    ours = [_members(g) for _, g in _tp_compat.all_groups(dg, [model.fc], roots)]
    assert not _tp_compat._mapped  # the library's own calls recompute the mappings again
    _library(monkeypatch)
    theirs = [_members(g) for g in dg.get_all_groups(ignored_layers=[model.fc], root_module_types=roots)]
    assert len(ours) == len(theirs) > 20
    assert ours == theirs


def test_the_indexed_duplicate_check_answers_as_the_librarys_scan() -> None:
    _tp_compat.install()
    model = torchvision.models.resnet18(num_classes=10).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(64)))
    other = dg.get_pruning_group(model.layer4[0].conv1, tp.prune_conv_out_channels, [0, 1])
    scan = _tp_compat.LIBRARY["has_pruning_op"]
    probes = [(dep, idxs) for dep, idxs in group] + [(dep, idxs[:-1]) for dep, idxs in group]
    probes += [(dep, idxs) for dep, idxs in other]
    answers = [group.has_pruning_op(dep, idxs) for dep, idxs in probes]
    assert answers == [scan(group, dep, idxs) for dep, idxs in probes]
    assert sum(answers) == len(group) and not any(answers[len(group) :])
    fresh, dep = tp.dependency.Group(), group[0].dep
    fresh.add_dep(dep, [_Index(0, 0)])
    assert fresh.has_pruning_op(dep, [_Index(0, 0)])
    fresh.add_and_merge(dep, [_Index(1, 1)])  # merged in place: the index reads the group as it is now
    assert not fresh.has_pruning_op(dep, [_Index(0, 0)])
    assert fresh.has_pruning_op(dep, [_Index(0, 0), _Index(1, 1)])


def test_the_indexed_merge_merges_as_the_librarys_scan() -> None:
    """``Group.add_and_merge`` finds the first item of the same target and handler through the index."""
    _tp_compat.install()
    model = torchvision.models.resnet18(num_classes=10).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)
    deps = [dep for dep, _ in dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0])]
    ours, theirs = tp.dependency.Group(), tp.dependency.Group()
    for step, dep in enumerate(deps * 3):
        idxs = [_Index(step % 5, step % 5), _Index(step % 3, step % 3)]
        ours.add_and_merge(dep, idxs)
        _tp_compat.LIBRARY["add_and_merge"](theirs, dep, idxs)
    assert [(dep, list(idxs)) for dep, idxs in ours] == [(dep, list(idxs)) for dep, idxs in theirs]
    assert len(ours) == len(deps)
