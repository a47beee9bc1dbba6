"""The torch-pruning shim: ShuffleNet traces, split sizes are read from the renamed attribute."""

from __future__ import annotations

import torch
import torch_pruning as tp
import torchvision

from spaces import _tp_compat


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
    """Why ``spaces._importance`` averages the per-sample squared gradients itself: torch-pruning 1.6's
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
