"""Export a candidate and load it back, without pickle.

An export directory holds ``plan.json`` (the :class:`spaces.Plan`),
``weights.safetensors`` (the candidate's fine-tuned weights) and ``model.json``
(the base model spec, input shape and classes, and the candidate's metrics).
:func:`load_exported` rebuilds the base model from its spec, applies the plan
(shapes only: the weights that count are then loaded) and loads the weights
strictly, so a stale or foreign weights file fails loudly instead of loading
partially.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from spaces import Status

if TYPE_CHECKING:
    from torch import nn

    from storage import StudyStore

__all__ = ["export_candidate", "load_exported"]

FORMAT = 1


def export_candidate(
    store: StudyStore, study: str, out: str | Path, *, trial: int | None = None, candidate: int | None = None
) -> Path:
    """Write ``plan.json``, ``weights.safetensors`` and ``model.json`` of one COMPLETE candidate to ``out``."""
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
    if not row.artifact or not Path(row.artifact).is_file():
        raise ValueError(
            f"the weights of trial {row.trial_number} are not on this machine ({row.artifact!r}): "
            "export on the worker that evaluated it"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(row.artifact, out / "weights.safetensors")
    (out / "plan.json").write_text(row.plan + "\n")
    opts = info.space_options
    meta = {
        "format": FORMAT,
        "model": info.model_spec,
        "data": info.data_spec,
        "input_shape": opts.get("input_shape"),
        "num_classes": opts.get("num_classes"),
        "in_channels": opts.get("in_channels"),
        "ignored_layers": opts.get("ignored_layers", []),
        "study": study,
        "trial": row.trial_number,
        "candidate": row.id,
        "accuracy": row.accuracy,
        "macs": row.macs,
        "params": row.params,
        "bytes": row.bytes,
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_exported(path: str | Path) -> nn.Module:
    """The compressed model of an export directory, in eval mode on the CPU."""
    import torch
    from safetensors.torch import load_file

    from evaluators import build_model
    from spaces import ModelSpace, Plan

    d = Path(path)
    for name in ("model.json", "plan.json", "weights.safetensors"):
        if not (d / name).is_file():
            raise ValueError(f"{str(d)!r} is not a PruneTune export: {name} is missing")
    meta = json.loads((d / "model.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / 'model.json'} has format {meta.get('format')!r}; this PruneTune reads {FORMAT}")
    plan = Plan.from_json((d / "plan.json").read_text())
    base = build_model(meta["model"], in_channels=meta.get("in_channels"), num_classes=meta.get("num_classes"))
    example = torch.zeros(1, *meta["input_shape"])
    space = ModelSpace(base, example, ignored_layers=meta.get("ignored_layers", []), verify=False)
    model = space.apply(plan)
    model.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
    return model.eval()
