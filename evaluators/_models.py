"""Building models from a spec string and loading their weights without pickle.

Specs:

* ``zoo:<name>`` — the project's zoo (:mod:`evaluators._zoo`);
* ``torchvision:<name>`` — a torchvision classification model, built with
  ``weights=None`` (nothing is downloaded);
* ``timm:<name>`` — a timm model (the ``timm`` extra; timm pinned in
  ``constraints.txt``), built with ``pretrained=False`` (nothing is
  downloaded: trained weights come from ``model.weights``, a safetensors
  file), the data's input channels (``in_chans``) and classes; keyword
  arguments of timm's ``create_model`` follow the name, comma-separated:
  ``timm:vit_tiny_patch16_224,img_size=32,patch_size=4``;
* ``hf:PATH`` — a causal language model saved in a local directory (config.json and
  safetensors), loaded offline without running code from it; ``hf-tiny:FAMILY`` — a
  small random one (:mod:`evaluators._hf`; the ``llm`` extra);
* ``package.module:factory`` — any importable callable returning an ``nn.Module``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces import InputTypeError, UnsupportedModelError, first_line

__all__ = ["build_model", "import_factory", "load_weights", "save_weights"]


def import_factory(spec: str, what: str) -> Any:
    """The callable named by ``package.module:name`` (``what``: "model" or "data", for messages)."""
    mod_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {mod_name!r} of {what} spec {spec!r}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{what} spec {spec!r}: {mod_name!r} has no callable {name!r}")
    return factory


# torchvision models whose constructor needs extra arguments to build offline and plain
_TV_EXTRA: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _adapt_stem(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution so that the model takes ``in_channels`` channels."""
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(
                        parent,
                        attr,
                        nn.Conv2d(
                            in_channels,
                            child.out_channels,
                            child.kernel_size,  # type: ignore[arg-type]
                            child.stride,  # type: ignore[arg-type]
                            child.padding,  # type: ignore[arg-type]
                            child.dilation,  # type: ignore[arg-type]
                            child.groups,
                            child.bias is not None,
                        ),
                    )
                return model
    raise ValueError("the model has no Conv2d stem to adapt")


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    available = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in available:
        raise ValueError(f"unknown torchvision model {name!r}; known: {', '.join(available)}")
    kwargs: dict[str, Any] = {"weights": None, **_TV_EXTRA.get(name, {})}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, **kwargs)


# create_model arguments that download or load files (timm's checkpoint loader unpickles): never taken
_TIMM_FILES = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}


def _timm_kwargs(spec: str, items: list[str]) -> dict[str, Any]:
    """``key=value`` items of a ``timm:`` spec, values read as int, float, bool or left as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"model spec {spec!r}: {item!r} is not a key=value argument of timm's create_model")
        value: Any = text.strip()
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip()] = {"true": True, "false": False}.get(value.lower(), value) if isinstance(value, str) else value
    banned = sorted(set(out) & _TIMM_FILES)
    if banned:
        raise ValueError(
            f"model spec {spec!r}: {banned[0]} is not taken (nothing is downloaded or unpickled): trained weights "
            "come from model.weights, a safetensors file"
        )
    return out


def _timm(spec: str, in_channels: int | None, num_classes: int | None) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model spec {spec!r} needs timm: pip install -e '.[timm]'") from None
    name, *items = spec.partition(":")[2].split(",")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        raise ValueError(f"unknown timm model {name!r} in timm {timm.__version__}{hint}")
    kwargs: dict[str, Any] = {**_timm_kwargs(spec, items), "pretrained": False}
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # timm's own checks raise many kinds; each is a one-line refusal here
        raise UnsupportedModelError(f"timm could not build {spec!r}: {first_line(exc, type(exc).__name__)}") from None


def build_model(spec: str, *, in_channels: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Build the model named by ``spec`` (see the module docs)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            "model spec must be 'zoo:<name>', 'torchvision:<name>', 'timm:<name>', 'hf:<directory>', "
            "'hf-tiny:<family>' or 'package.module:factory', "
            f"got {spec!r}"
        )
    kind, _, name = spec.partition(":")
    if kind == "zoo":
        from evaluators._zoo import ZOO

        if name not in ZOO:
            raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
        kwargs = {}
        if in_channels is not None:
            kwargs["in_channels"] = in_channels
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = ZOO[name](**kwargs)
    elif kind == "torchvision":
        model = _torchvision(name, num_classes)
        if in_channels is not None and in_channels != 3:
            model = _adapt_stem(model, in_channels)
    elif kind == "timm":
        model = _timm(spec, in_channels, num_classes)
    elif kind in ("hf", "hf-tiny"):
        from evaluators._hf import hf_model, tiny_model

        model = hf_model(name) if kind == "hf" else tiny_model(name)
    else:
        factory = import_factory(spec, "model")
        try:
            model = factory()
        except Exception as exc:
            first = first_line(exc, "")
            raise UnsupportedModelError(f"model factory {spec!r} raised {type(exc).__name__}: {first}") from exc
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model factory {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict from a safetensors file or a weights-only torch file (no pickle)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"weights file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as exc:
            raise ValueError(f"weights file {str(p)!r} is not a valid safetensors file: {exc}") from None
    else:
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": our one-line error says it all
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's own text suggests weights_only=False: never an option here
            raise ValueError(
                f"weights file {str(p)!r} is not a weights-only torch file ({type(exc).__name__}): it is damaged "
                "or holds objects other than tensors, and PruneTune never unpickles code; save the weights with "
                "safetensors or torch.save(model.state_dict())"
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(p)!r} does not hold a state dict")
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"weights file {str(p)!r} does not match the model: {len(wrong)} tensors have other shapes, e.g. "
            f"{k} is {tuple(state[k].shape)} in the file and {tuple(own[k].shape)} in the model "
            "(another model, or another number of classes or input channels?)"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {str(p)!r} does not match the model: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:2]})"
        )
    return model


def save_weights(weights: nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a model's state dict (or a state dict) to the safetensors file ``path``, atomically.

    The tensors go to a temporary file beside ``path`` that then replaces it, so
    readers (and a process killed mid-write) only ever see no file, the old
    one or the complete new one. Returns ``path``.
    """
    from safetensors.torch import save_file

    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
