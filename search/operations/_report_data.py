"""What a study's report needs from the model itself (torch), handed to storage's page as data frames.

:func:`report_extras` rebuilds the base model from the study record (its spec,
and the baseline weights that :func:`search.prepare` recorded, or the config's),
traces its space once, and computes

* the per-layer structure of the front's plans and of the allocator's and the
  uniform plan (the study's own seed candidates when it evaluated them, else
  computed for the study's budget): channels kept per group, rank kept per
  factorizable layer;
* the base model's filter L1 norms, with the filters one front member prunes
  marked (read from :meth:`spaces.ModelSpace.masked_model`, so they are exactly
  the ones surgery removes);
* the reproducibility block: config, versions, platform.

Nothing is written to the store. A section that cannot be computed (the base
weights are gone, the model factory is not trusted) gets a one-line note
instead. :func:`write_study_report` writes the whole report.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spaces import CandidateKind, UsageError
from storage import pick_within_cap

if TYPE_CHECKING:
    import pandas as pd

    from search._config import Config
    from spaces import ModelSpace, Plan
    from storage import CandidateRow, ReportExtras, StudyRecord, StudyStore

__all__ = ["base_weights_path", "report_extras", "versions", "write_study_report"]

_SAFE_KINDS = ("zoo:", "torchvision:", "timm:")
_SEEDS_SHOWN = (CandidateKind.ALLOCATOR, CandidateKind.UNIFORM, CandidateKind.GLOBAL)  # seeds the structure panel shows
_PACKAGES = ("prunetune", "torch", "torch-pruning", "optuna", "sqlalchemy", "pandas", "plotly")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def base_weights_path(info: StudyRecord, config: Config | None = None) -> Path | None:
    """The base model's weights: as the study recorded them, else the config's (or its cached baseline)."""
    from evaluators import Recipe, baseline_key

    recorded = info.spec.base_weights
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if config is not None:
        if config.model.weights:
            return Path(config.model.weights)
        m = config.model
        recipe = Recipe(epochs=m.train_epochs, lr=m.train_lr, batch_size=m.train_batch_size)
        key = baseline_key(info.model_spec, info.data_spec, recipe, m.train_seed, config.data.seed)
        cached = Path(config.search.artifacts_dir) / "baselines" / f"{key}.safetensors"
        if cached.is_file():
            return cached
    return None


def _space(info: StudyRecord, weights: Path) -> ModelSpace:
    import torch

    from evaluators import build_model, load_weights
    from spaces import Importance, ModelSpace

    spec = info.spec
    if spec.input_shape is None:
        raise UsageError(f"study {info.name!r} did not record its input shape: its model cannot be rebuilt here")
    model = build_model(info.model_spec, in_channels=spec.in_channels, num_classes=spec.num_classes)
    load_weights(model, weights)
    example = torch.zeros(1, *spec.input_shape)
    # the report reads kept counts, never which channels: a data-aware criterion (no calibration data here) reads as l1
    importance = "l1" if Importance(spec.importance).needs_data else spec.importance
    return ModelSpace(
        model.eval(),
        example,
        importance=importance,
        round_to=spec.round_to,
        ignored_layers=spec.ignored_layers,
        verify=False,
    )


def _label(row: CandidateRow) -> str:
    return f"trial {row.trial_number}" + (f" ({row.kind})" if row.kind in _SEEDS_SHOWN else "")


def _seed_plans(space: ModelSpace, info: StudyRecord, rows: list[CandidateRow], shown: set[int]) -> dict[str, Plan]:
    """The allocator's, the uniform and the global-ranking plan: the study's seed candidates (unless ``shown``
    already), else computed for its budget."""
    from spaces import Budget, Importance, Plan

    budget = Budget.from_dict(info.budget)
    out: dict[str, Plan] = {}
    for kind in _SEEDS_SHOWN:
        row = next((r for r in rows if r.kind == kind), None)
        if row is not None:
            if row.id not in shown:
                out[_label(row)] = Plan.from_json(row.plan)
        elif Importance(info.spec.importance).needs_data and kind is not CandidateKind.UNIFORM:
            continue  # the allocator and the global ranking read the importance, which needs calibration data
        elif "latency" in info.budget:
            continue  # met on the device profile's prediction, which the report does not measure
        elif kind is CandidateKind.ALLOCATOR:
            rank, method = _rank_options(info.spec.space)
            allocation = space.allocate(budget, rank=rank, method=method)
            out["allocator (not evaluated)"] = space.fit(allocation.plan, budget)
        elif kind is CandidateKind.UNIFORM:
            out["uniform (not evaluated)"] = space.fit(space.uniform_plan(0.0), budget)
        else:
            out["global (not evaluated)"] = space.global_plan(budget)
    return out


def structure_frame(space: ModelSpace, plans: dict[str, Plan]) -> pd.DataFrame:
    """Per plan: what each plan dimension keeps of each unit (channels per group, rank per layer, ...)."""
    import pandas as pd

    from spaces.dimensions import Reported, with_role

    rows: list[dict[str, Any]] = []
    for label, plan in plans.items():
        for dim in with_role(Reported):
            rows += [{"plan": label, "what": r.what, "unit": r.unit, "kept": r.kept, "total": r.total,
                      "fraction": r.fraction} for r in dim.structure_rows(space, plan)]  # fmt: skip
    return pd.DataFrame(rows, columns=["plan", "what", "unit", "kept", "total", "fraction"])


def filters_frame(space: ModelSpace, plan: Plan) -> pd.DataFrame:
    """Every output filter of the layers the space can prune: its L1 norm in the base model, and whether
    ``plan`` prunes it (its weights are zero in :meth:`~spaces.ModelSpace.masked_model` but not in the base)."""
    import pandas as pd
    import torch

    base = space.model
    masked = space.masked_model(plan)
    order = {name: i for i, (name, _) in enumerate(base.named_modules())}
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for layer in sorted({out for g in space.groups for out in g.outputs}, key=order.__getitem__):  # model order
            w = base.get_parameter(f"{layer}.weight")
            m = masked.get_parameter(f"{layer}.weight")
            l1 = w.abs().flatten(1).sum(1)
            pruned = (m.flatten(1).abs().sum(1) == 0) & (l1 > 0)
            rows += [{"layer": layer, "filter": i, "l1": float(v), "pruned": bool(p)}
                     for i, (v, p) in enumerate(zip(l1.tolist(), pruned.tolist(), strict=True))]  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "filter", "l1", "pruned"])


def _rank_options(stored: dict[str, Any]) -> tuple[bool, str]:
    """Whether a study searched ranks, and its method: a ``[space.rank]`` table, or an older study's flat keys."""
    rank = stored.get("rank")
    if isinstance(rank, dict):
        return True, str(rank.get("method", "svd"))
    return bool(rank), str(stored.get("method", "svd"))


def _config_text(info: StudyRecord, config: Config | None) -> str:
    from storage import public_url

    if config is None:
        opts = {k: v for k, v in info.spec.to_json().items() if k != "base_weights"}
        stored = {"model": info.model_spec, "data": info.data_spec, "budget": info.budget, "space": opts}
        return "as the study recorded it (no config given):\n" + json.dumps(stored, indent=2)
    data = config.model_dump(mode="json")
    data["storage"]["url"] = public_url(data["storage"]["url"])
    return json.dumps(data, indent=2)


def report_extras(
    store: StudyStore,
    study: str,
    *,
    config: Config | None = None,
    filters_trial: int | None = None,
    trusted: Callable[[str], bool] | None = None,
) -> ReportExtras:
    """The report's model-dependent sections of ``study`` (see the module docs).

    ``filters_trial``: the front member whose pruned filters are marked (default:
    the most accurate). ``trusted``: which ``package.module:factory`` model specs
    may be imported to rebuild the base model (default: any, as ``prunetune run`` does).
    """
    from spaces import Plan
    from storage import ReportExtras

    info = store.study(study)
    rows = store.candidates(info.id)
    front = store.front(info.id)
    repro: dict[str, Any] = {f"version {k}": v for k, v in versions().items()}
    repro["config"] = _config_text(info, config)
    notes: dict[str, str] = {}
    weights = base_weights_path(info, config)
    if not info.model_spec.startswith(_SAFE_KINDS) and trusted is not None and not trusted(info.model_spec):
        why = f"model factory {info.model_spec!r} is not registered here, so the base model is not rebuilt"
        return ReportExtras(reproducibility=repro, notes={"structure": why, "filters": why})
    if weights is None:
        why = "the base model's weights are not on this machine (pass the run's config to find its baseline)"
        return ReportExtras(reproducibility=repro, notes={"structure": why, "filters": why})
    repro["base weights"] = str(weights)
    space = _space(info, weights)
    plans = {f"{_label(r)}, front": Plan.from_json(r.plan) for r in front}
    plans.update(_seed_plans(space, info, rows, {r.id for r in front}))
    structure = structure_frame(space, plans)
    chosen: CandidateRow | None = None
    if filters_trial is not None:
        chosen = next((r for r in front if r.trial_number == filters_trial), None)
        if chosen is None:
            raise ValueError(
                f"trial {filters_trial} is not on the front of {study!r}; front trials: "
                f"{', '.join(str(r.trial_number) for r in front) or 'none'}"
            )
    elif front:
        pick = pick_within_cap(front, info.spec.score)  # the study's pick: no winner inside the noise
        chosen = None if pick is None else pick.row
    filters = filters_frame(space, Plan.from_json(chosen.plan)) if chosen is not None else None
    if chosen is None:
        notes["filters"] = "no completed candidate yet: the front is empty"
    label = None if chosen is None else f"trial {chosen.trial_number}"
    return ReportExtras(structure=structure, filters=filters, filters_of=label, reproducibility=repro, notes=notes)


def write_study_report(
    store: StudyStore,
    study: str,
    out: str | Path,
    *,
    config: Config | None = None,
    filters_trial: int | None = None,
) -> list[Path]:
    """CSV, Markdown and the HTML page of ``study`` in ``out`` (storage's :func:`~storage.write_report`)."""
    from storage import write_report

    extras = report_extras(store, study, config=config, filters_trial=filters_trial)
    return write_report(store, study, out, extras=extras)
