"""Compatibility shims for torch-pruning on current PyTorch.

The shims replace functions inside torch-pruning's ``dependency`` package,
written against (and tested with) torch-pruning 1.6.1 only:
:func:`install` refuses any other installed version with a one-line
:class:`TorchPruningVersionError` naming both (pyproject pins the same
version), because a patched internal that changed would fail silently.

torch-pruning 1.6.1 reads the autograd attribute ``_saved_self_sizes`` of
``ViewBackward``/``ReshapeBackward`` nodes. PyTorch 2.x renamed it to
``_saved_self_sym_sizes``, so torch-pruning falls back to a legacy branch that
divides by a channel count of zero on ShuffleNet's channel shuffle
(``ZeroDivisionError``) and guesses flatten strides elsewhere.

:func:`install` replaces ``torch_pruning.dependency.index_mapping.
update_reshape_index_mapping`` with :func:`_update_reshape_index_mapping`, the
same algorithm reading whichever attribute exists and refusing a mapping with a
zero channel count, and leaving the mapping alone where the library's channel
inference fails (an ``IndexError`` on MaxViT's splits). It is idempotent.
``shape_infer.init_shape_information`` gets the same fix for
``SplitBackward`` (``torch.chunk``), whose split sizes it otherwise infers
recursively and gets wrong on ShuffleNet (``IndexError`` in the split mapping).

Whatever the library maps, :class:`spaces.ModelSpace` verifies every group by
masked-channel equivalence (see ``_verify.py``) and excludes groups whose
pruning would change the kept channels' outputs, so a wrong mapping can never
produce a wrong model.

``update_concat_index_mapping`` is wrapped so that a concatenation with an
input whose channel count the library cannot infer gets no mapping (the
library sums the sizes before it checks for an unknown one: a ``TypeError``
on torchvision's swin_s and swin_b at 64×64).

:func:`all_groups` lists the groups root by root, so that one root whose
index mapping raises is excluded alone instead of failing the whole model.
It also computes the graph's index mappings once (the library recomputes all
of them for every root), and ``Group.has_pruning_op`` / ``Group.add_and_merge``
find an item through an index by (target, handler) instead of scanning the
group (quadratic in its size): same answers, tested against the library's
scans; on swin_b these were 16 of the 22 s a space took to build.

One more library limit is handled in ``_trace.py`` rather than patched: grouped
(non-depthwise) convolutions, whose input pruning in
``ConvPruner.prune_in_channels`` keeps ``keep_idxs[:len(keep_idxs)//groups]``
(wrong channels), are excluded from the space.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from spaces._errors import PruneTuneError

SUPPORTED_VERSIONS = ("1.6.1",)  # the torch-pruning versions these shims were written and tested against
_installed = False
LIBRARY: dict[str, Any] = {}  # the library's own functions that install() replaced (the tests compare with them)
_mapped: set[int] = set()  # ids of the graphs whose index mappings all_groups computed (see install)


class TorchPruningVersionError(PruneTuneError, ImportError):
    """The installed torch-pruning is not a version :mod:`spaces.graph._tp_compat` was tested against."""


def check_version(installed: str | None = None) -> None:
    """Raise :class:`TorchPruningVersionError` unless ``installed`` (default: the installed one) is supported."""
    if installed is None:
        installed = importlib.metadata.version("torch-pruning")  # the package's __version__ lags (1.6.1 says 1.6.0)
    if installed not in SUPPORTED_VERSIONS:
        raise TorchPruningVersionError(
            f"torch-pruning {installed} is installed, but spaces.graph._tp_compat patches the internals of "
            f"torch-pruning {' or '.join(SUPPORTED_VERSIONS)} only: pip install torch-pruning=={SUPPORTED_VERSIONS[-1]}"
        )


def _self_sizes(grad_fn: Any) -> tuple[int, ...] | None:
    for name in ("_saved_self_sizes", "_saved_self_sym_sizes"):
        if hasattr(grad_fn, name):
            return tuple(int(s) for s in getattr(grad_fn, name))
    return None


def _inferred(infer: Any, graph: Any, node: Any, depth: list[int]) -> int | None:
    """A channel count torch-pruning infers; None where its inference fails (a split's outputs it did not size)."""
    try:
        return infer(graph, node, depth)
    except IndexError:  # MaxViT: a split along another dimension than channels has more outputs than split_sizes
        return None


def _update_reshape_index_mapping(graph: Any, reshape_node: Any) -> None:
    from torch_pruning.dependency import shape_infer
    from torch_pruning.dependency.constants import MAX_RECURSION_DEPTH
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    size = _self_sizes(reshape_node.grad_fn)
    if size is not None:
        if len(size) not in (1, 4):
            return
    elif not graph._2d_4d:
        return

    out_channels = None
    for n in reshape_node.outputs:
        depth = [0]
        out_channels = _inferred(shape_infer.infer_in_channels_recursively, graph, n, depth)
        if depth[0] > MAX_RECURSION_DEPTH:
            return
        if out_channels is not None:
            break
    in_channels = None
    for n in reshape_node.inputs:
        depth = [0]
        in_channels = _inferred(shape_infer.infer_out_channels_recursively, graph, n, depth)
        if depth[0] > MAX_RECURSION_DEPTH:
            return
        if in_channels is not None:
            break
    if not out_channels or not in_channels or out_channels == in_channels:
        return
    if size is not None and len(size) == 4 and size[1] * size[2] * size[3] != out_channels:
        return

    if out_channels > in_channels:  # flatten
        if out_channels % in_channels:
            return
        stride = out_channels // in_channels
        for in_node in reshape_node.inputs:
            for dep in reshape_node.dependencies:
                if dep.target == in_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=True)
            for dep in in_node.dependencies:
                if dep.target == reshape_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=False)
    else:  # 1D -> 2D
        if in_channels % out_channels:
            return
        stride = in_channels // out_channels
        for out_node in reshape_node.outputs:
            for dep in reshape_node.dependencies:
                if dep.target == out_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=True)
            for dep in out_node.dependencies:
                if dep.target == reshape_node:
                    dep.index_mapping[0] = _FlattenIndexMapping(stride=stride, reverse=False)


def _init_shape_information(graph: Any) -> None:
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer
    from torch_pruning.dependency.constants import MAX_VALID_DIM

    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.SPLIT:
            continue
        grad_fn = node.grad_fn
        dim = getattr(grad_fn, "_saved_dim", None)
        if _self_sizes(grad_fn) is not None or hasattr(grad_fn, "_saved_split_sizes"):
            if dim is not None and dim != 1 and dim < MAX_VALID_DIM:
                continue
            if hasattr(grad_fn, "_saved_split_sizes"):
                chs = [int(c) for c in grad_fn._saved_split_sizes]
            elif hasattr(grad_fn, "_saved_split_size"):
                size = _self_sizes(grad_fn)
                step = int(grad_fn._saved_split_size)
                total = size[1] if size is not None and len(size) > 1 else step * len(node.outputs)
                chs = [min(step, total - i) for i in range(0, total, step)]
            else:
                continue
        else:
            chs = []
            for n in node.outputs:
                depth = [0]
                chs.append(shape_infer.infer_in_channels_recursively(graph, n, depth))
        offsets = [0]
        for ch in chs:
            if ch is None:
                continue
            offsets.append(offsets[-1] + ch)
        node.module.split_sizes = chs
        node.module.offsets = offsets


def _has_pruning_op(self: Any, dep: Any, idxs: Any) -> bool:
    """``Group.has_pruning_op`` through an index by (target, handler) instead of a scan of the whole group.

    The library's scan, once per dependency added, is quadratic in the group's
    size (the largest single cost of building a Swin space). The index holds positions and
    is extended with the items appended since the last call; the indices are
    read from the group itself, so an item merged in place is compared as it
    is now. Same answer as the library's.
    """
    items = self._group
    return any(items[p][1] == idxs for p in _positions(self, dep))


def _positions(group: Any, dep: Any) -> list[int]:
    """The positions of ``group``'s items with ``dep``'s target and handler, from an index kept on the group."""
    items = group._group
    index = group.__dict__.get("_prunetune_index")
    if index is None or index[0] is not items or index[1] > len(items):
        index = group._prunetune_index = [items, 0, {}]
    for pos in range(index[1], len(items)):
        index[2].setdefault((items[pos][0].target, items[pos][0].handler), []).append(pos)
    index[1] = len(items)
    found = index[2].get((dep.target, dep.handler), [])
    return [p for p in found if items[p][0].target == dep.target and items[p][0].handler == dep.handler]


def _add_and_merge(self: Any, dep: Any, idxs: Any) -> None:
    """``Group.add_and_merge`` with the item found through :func:`_positions` (the library scans the group:
    quadratic too); the merge is the library's, index by index."""
    from torch_pruning import _helpers

    for i in _positions(self, dep)[:1]:
        _dep, _idxs = self._group[i]
        visited: set[int] = set()
        merged = []
        for index in _idxs + idxs:
            if index.idx not in visited:
                merged.append(index)
                visited.add(index.idx)
        self._group[i] = _helpers.GroupItem(dep=_dep, idxs=merged)
        return
    self.add_dep(dep, idxs)


def all_groups(dg: Any, ignored_layers: list[Any], root_module_types: tuple[type, ...]) -> list[tuple[Any, Any]]:
    """``DependencyGraph.get_all_groups``, one root at a time: ``(root module, group or the exception it raised)``.

    The library's generator stops at the first root whose index mapping
    raises (MaxViT: an ``IndexError`` in a split's mapping), losing every
    group; here that root alone fails, and the caller excludes it with the
    reason.
    """
    from torch_pruning.dependency import index_mapping

    visited: set[int] = set()
    ignored = list(ignored_layers) + list(dg.IGNORED_LAYERS_IN_TRACING)
    out: list[tuple[Any, Any]] = []
    try:
        index_mapping.update_index_mapping(dg)
        _mapped.add(id(dg))  # the library recomputes every mapping per root: once is enough (the graph is fixed)
    except (IndexError, ValueError, RuntimeError):
        pass  # each root raises it below, as without this shortcut
    try:
        _group_roots(dg, ignored, root_module_types, visited, out)
    finally:
        _mapped.discard(id(dg))
    return out


def _group_roots(
    dg: Any, ignored: list[Any], root_module_types: tuple[type, ...], visited: set[int], out: list[Any]
) -> None:
    for m in list(dg.module2node):
        pruner = dg.get_pruner_of_module(m) if isinstance(m, root_module_types) and m not in ignored else None
        if pruner is None or pruner.get_out_channels(m) is None or id(m) in visited:
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (IndexError, ValueError, RuntimeError) as exc:
            out.append((m, exc))
            continue
        roots = [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
        visited.update(id(r) for r in roots)
        if not any(r in ignored for r in roots):
            out.append((m, group))


def _unknown_concat_size(graph: Any, cat_node: Any) -> bool:
    """Whether a concatenation has an input whose channel count torch-pruning cannot infer (its sizes cached)."""
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer

    if cat_node.type != ops.OPTYPE.CONCAT:
        return False
    if cat_node.module.concat_sizes is None:
        sizes = [shape_infer.infer_channels_between(graph, n, cat_node) for n in cat_node.inputs]
        cat_node.module.concat_sizes = sizes
    return None in cat_node.module.concat_sizes


def install() -> None:
    """Install the shims (idempotent); on an untested torch-pruning version, raise before patching anything."""
    from torch_pruning.dependency import graph, group, index_mapping, shape_infer

    global _installed
    if _installed:
        return
    check_version()

    if graph.shape_infer is not shape_infer or not hasattr(shape_infer, "init_shape_information"):
        # graph.py must call shape_infer.init_shape_information for the fix to take effect
        raise TorchPruningVersionError("this torch-pruning is not the layout spaces.graph._tp_compat patches (1.6.1)")
    index_mapping.update_reshape_index_mapping = _update_reshape_index_mapping
    original_concat = index_mapping.update_concat_index_mapping

    def update_concat_index_mapping(graph: Any, cat_node: Any) -> None:
        if _unknown_concat_size(graph, cat_node):
            return  # no mapping: the library would sum a None size (swin_s/swin_b at small inputs)
        original_concat(graph, cat_node)

    index_mapping.update_concat_index_mapping = update_concat_index_mapping
    original_update = index_mapping.update_index_mapping

    def update_index_mapping(graph: Any) -> None:
        if id(graph) not in _mapped:  # all_groups computed this graph's mappings, and nothing changes it meanwhile
            original_update(graph)

    LIBRARY.update(
        update_index_mapping=original_update,
        has_pruning_op=group.Group.has_pruning_op,
        add_and_merge=group.Group.add_and_merge,
    )
    index_mapping.update_index_mapping = update_index_mapping
    group.Group.has_pruning_op = _has_pruning_op
    group.Group.add_and_merge = _add_and_merge
    shape_infer.init_shape_information = _init_shape_information
    _installed = True
