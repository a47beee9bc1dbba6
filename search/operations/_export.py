"""Export a candidate and load it back, without pickle and without running code a file names.

An export directory holds ``plan.json`` (the :class:`spaces.Plan`),
``weights.safetensors`` (the candidate's weights: those of ``prunetune finalize``
when it was finalized, else the search's quick fine-tune) and ``model.json``
(the base model spec, input shape and classes, the candidate's metrics —
validation accuracy, and test accuracy when finalized, labelled as such — and
the weights' SHA-256).

:func:`export_candidate` checks the weights against the SHA-256 the store
recorded when they were written, so a damaged or replaced file is never
shipped. :func:`load_exported` checks them again against ``model.json``,
rebuilds the base model, applies the plan (shapes only: the weights that count
are then loaded) and loads the weights strictly, so a stale or foreign weights
file fails loudly instead of loading partially.

An export is a file people pass around, so loading one never imports or calls
code that it names: only ``zoo:``, ``torchvision:`` and ``timm:`` model specs are built
from the file; a model from a ``package.module:factory`` spec is built only by
a factory the caller passes (``factories={spec: callable}``).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spaces import Plan, Status, UsageError
from spaces.dimensions import Reported, with_role
from storage import candidate_view

if TYPE_CHECKING:
    from torch import nn

    from storage import CandidateRow, StudyStore

__all__ = ["export_candidate", "load_exported"]

FORMAT = 1
_SAFE_KINDS = ("zoo:", "torchvision:", "timm:")


def _weights_of(row: CandidateRow, study: str) -> Path:
    """The candidate's weights file (finalize's when it was finalized), checked against its recorded SHA-256."""
    from storage import file_sha256

    what = f"trial {row.trial_number} of study {study!r}"
    host = (row.worker or "").rpartition(":")[0]
    artifact, sha = row.artifact, row.weights_sha256
    if row.final is not None:
        what, host = f"the finalized {what}", ""
        artifact, sha = row.final.artifact, row.final.weights_sha256
    if not artifact or not Path(artifact).is_file():
        if host and host != socket.gethostname():
            raise ValueError(
                f"the weights of {what} are on the worker that evaluated it ({host}: {artifact!r}): "
                "export there, or give every worker a shared search.artifacts_dir"
            )
        raise ValueError(
            f"the weights file of {what} ({artifact!r}) is gone from this machine: it was deleted or moved "
            "after the study ran; export another trial"
        )
    digest = file_sha256(artifact)
    if sha is not None and digest != sha:
        raise ValueError(
            f"the weights file of {what} ({artifact!r}) is not the one the study wrote (SHA-256 "
            f"{str(digest)[:12]}..., recorded {sha[:12]}...): it is damaged or was replaced"
        )
    return Path(artifact)


def out_dir(out: str | Path) -> Path:
    """The folder ``--out`` names, created if needed; a one-line UsageError when it cannot be."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {str(p)!r} is a file, not a folder: name a new or existing folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out folder {str(p)!r}: {exc.strerror or exc}") from None
    return p


def export_candidate(
    store: StudyStore, study: str, out: str | Path, *, trial: int | None = None, candidate: int | None = None
) -> Path:
    """Write ``plan.json``, ``weights.safetensors`` and ``model.json`` of one COMPLETE candidate to ``out``."""
    from storage import file_sha256

    info = store.study(study)
    if (trial is None) == (candidate is None):
        raise ValueError("export needs exactly one of a trial number or a candidate id")
    if trial is not None:
        row = store.candidate(info.id, trial_number=trial)
    else:
        try:
            row = store.candidate(info.id, id=candidate)
        except ValueError:
            raise ValueError(f"study {study!r} has no candidate {candidate}") from None
    if row.status is not Status.COMPLETE:
        raise ValueError(
            f"trial {row.trial_number} of study {study!r} is {row.status.value}, not COMPLETE: nothing to export"
        )
    weights = _weights_of(row, study)
    d = out_dir(out)
    shutil.copyfile(weights, d / "weights.safetensors")
    (d / "plan.json").write_text(row.plan + "\n")
    spec, view = info.spec, candidate_view(row, info.base_cost, ())
    meta = {
        "format": FORMAT,
        "model": info.model_spec,
        "data": info.data_spec,
        "input_shape": None if spec.input_shape is None else list(spec.input_shape),
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "ignored_layers": spec.ignored_layers,
        "study": study,
        **{k: view[k] for k in ("trial", "candidate")},
        "weights": "finalized" if row.final is not None else "search",  # finalize's long recipe, or the search's
        "accuracy": row.final.val_accuracy if row.final is not None else row.accuracy,  # validation split
        "search_accuracy": view["accuracy"],  # validation, after the search's short fine-tune (its top rung)
        "rung": view["rung"],
        "test_accuracy": view["test_accuracy"],  # the test split: measured by finalize, never selected on
        "finalized": row.final.to_json() if row.final is not None else None,
        **{k: view[k] for k in ("macs", "params", "bytes")},
        "weights_sha256": file_sha256(d / "weights.safetensors"),
    }
    plan = Plan.from_json(row.plan)
    notes = {dim.key: n for dim in with_role(Reported) if (n := dim.export_notes(plan)) is not None}
    if notes:
        meta["compression"] = notes  # what each plan dimension changed, and how (bits: the quantization scheme)
    (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def _read_meta(d: Path) -> dict[str, Any]:
    for name in ("model.json", "plan.json", "weights.safetensors"):
        if not (d / name).is_file():
            raise ValueError(f"{str(d)!r} is not a PruneTune export: {name} is missing")
    try:
        meta = json.loads((d / "model.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{d / 'model.json'} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{d / 'model.json'} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / 'model.json'} has format {meta.get('format')!r}; this PruneTune reads {FORMAT}")
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{d / 'model.json'}: input_shape must be a list of positive integers, got {shape!r}")
    if not isinstance(meta.get("model"), str):
        raise ValueError(f"{d / 'model.json'}: model must be a model spec string, got {meta.get('model')!r}")
    return meta


def _base_model(meta: dict[str, Any], d: Path, factories: Mapping[str, Callable[[], nn.Module]]) -> nn.Module:
    """The base model: zoo and torchvision specs are built; any other spec only by a factory the caller passed."""
    from torch import nn

    from evaluators import build_model

    spec = meta["model"]
    if spec.startswith(_SAFE_KINDS):
        return build_model(spec, in_channels=meta.get("in_channels"), num_classes=meta.get("num_classes"))
    if spec not in factories:
        raise ValueError(
            f"{d / 'model.json'} names model factory {spec!r}; loading an export never imports code that a file "
            f"names: if you trust it, pass load_exported(DIR, factories={{{spec!r}: your_factory}})"
        )
    model = factories[spec]()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory passed for {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_exported(path: str | Path, *, factories: Mapping[str, Callable[[], nn.Module]] | None = None) -> nn.Module:
    """The compressed model of an export directory, in eval mode on the CPU.

    ``factories`` maps a ``package.module:factory`` model spec to the callable
    that builds it, for exports of models that are not in the zoo or
    torchvision; nothing named in the export is ever imported.
    """
    import torch
    from safetensors.torch import load_file

    from spaces import Importance, ModelSpace, Plan
    from storage import file_sha256

    d = Path(path)
    meta = _read_meta(d)
    weights = d / "weights.safetensors"
    want = meta.get("weights_sha256")
    if want is not None and file_sha256(weights) != want:
        raise ValueError(
            f"{weights} does not match the SHA-256 in model.json: the export is damaged or was tampered with"
        )
    plan = Plan.from_json((d / "plan.json").read_text())
    base = _base_model(meta, d, factories or {})
    example = torch.zeros(1, *meta["input_shape"])
    space = ModelSpace(base, example, ignored_layers=meta.get("ignored_layers", []), verify=False)
    if plan.importance is not None and Importance(plan.importance).needs_data:
        # the base here is freshly initialized and every weight comes from the file: only the shapes matter, and
        # they do not depend on which channels were kept (a data-aware criterion would need calibration data)
        plan = plan.replace(importance=Importance.L1.value)
    model = space.apply(plan)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # safetensors' header errors, or tensors that do not fit the planned model
        raise ValueError(f"{weights} does not load into the planned model: {type(exc).__name__}") from None
    return model.eval()
