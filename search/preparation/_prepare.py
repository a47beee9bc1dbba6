"""Everything a study needs before its first candidate, checked before any write: :func:`prepare`.

It loads the data, trains (or loads) the baseline, traces the space, repairs
the uniform plan onto the budget (an infeasible budget fails here), and opens
the study in the store. Ctrl-C stops it at once (:mod:`spaces.runtime._interrupt`: no
loop here needs a safe point); the store's transactions and the cached tables'
writes are protected sections, so nothing is left half-written. Bad input of
any kind raises a one-line
``ValueError``/``PruneTuneError`` and leaves an existing study untouched. What
it builds is one frozen :class:`Prepared`, shared by the drivers and by every
candidate's life (:mod:`search.study._candidate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search._config import Config
from search.preparation._profile import device_profile, needs_profile, predicts_latency, profiled_methods
from spaces import Importance, Objective, UsageError, protected

if TYPE_CHECKING:
    import torch
    from optuna.distributions import BaseDistribution
    from torch import nn

    from evaluators import DataBundle, Evaluator, TeacherPool
    from spaces import Budget, Cost, ModelSpace, Plan, Sensitivity
    from storage import StudySpec, StudyStore

__all__ = [
    "Prepared",
    "Worker",
    "allocator_sensitivity",
    "default_evaluator",
    "importance_scores",
    "prepare",
    "prepare_worker",
]


@dataclass(frozen=True, kw_only=True)
class Worker:
    """What evaluating or training one compressed model of a study needs in a process: the study's config, its
    store row, the data, the trained base model and its space (device profile and importance attached).

    ``finalize`` builds only this (:func:`prepare_worker`); a study's :class:`Prepared` adds what sampling and
    scheduling need.
    """

    config: Config
    study: str  # the study's name
    study_id: int
    store: StudyStore
    data: DataBundle
    device: torch.device
    base_model: nn.Module  # in eval mode on ``device`` (the distillation teacher)
    base_accuracy: float
    space: ModelSpace
    base_cost: Cost
    artifacts: Path  # where the candidates' weights go
    base_weights: Path | None = None  # the base model's weights file (what cached measurements are keyed by)
    pool: TeacherPool | None = None  # evaluate.score = "kl": the dense model's outputs on held-out training images


@dataclass(frozen=True, kw_only=True)
class Prepared(Worker):
    """A study ready to evaluate candidates in this process (built once by :func:`prepare`): the worker's part,
    and the evaluator, the objectives, the budget and the sampler's parameters."""

    evaluator: Evaluator
    objectives: tuple[Objective, ...]  # accuracy first, then the costs (and latency) to minimise
    budget: Budget
    uniform: Plan  # the uniform plan repaired onto the budget
    dists: dict[str, BaseDistribution]  # the sampler's parameters (search.sampling._params)
    floor: float = 1.0  # the lowest cost level, as a fraction of the budget's cap (1: the cap only)
    rungs: tuple[int, ...] = (100,)  # cumulative fine-tune steps at the end of each rung
    anchors: dict[str, dict[str, float]] | None = None  # sample_by = "blend": the one-shot plans' prune ratios

    @property
    def space_options(self) -> dict[str, Any]:
        """The config's ``[space]`` options, as the plan dimensions read them (sampler parameters and mapping):
        the flat keys, each plug-in dimension's validated options under its key (its ``[space.<key>]`` table),
        and the blend's anchor plans (``anchors``) once the search has computed them."""
        options = self.config.space.options()
        return options if self.anchors is None else {**options, "anchors": self.anchors}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a Ray driver ships it to its trials once): the plan travels as JSON, the store as its URL."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["uniform"] = self.uniform.to_json()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from spaces import Plan

        for name, value in {**state, "uniform": Plan.from_json(state["uniform"])}.items():
            object.__setattr__(self, name, value)


DEFAULT_FLOOR = 0.25  # of the cap: a 4x range of costs


def cost_floor(floor: str | None, space: ModelSpace, budget: Budget) -> float:
    """``search.floor`` as a fraction of the budget's cap (see the config key); 1.0 for ``"cap"``.

    The default, a quarter of the cap, is raised to what the space can reach (every group keeps a
    channel); a floor the user gave that the space cannot reach, or above the cap, is an error.
    """
    import numpy as np

    from search.sampling._params import level_of

    if floor == "cap":
        return 1.0
    tightest = budget.tightest(space.base_cost)
    smallest_keep = np.array([space.allowed_keeps(g, space.round_to)[0] for g in space.groups], dtype=np.int64)
    smallest = space.costs.cost_of_keep(smallest_keep, None)
    reachable = level_of(smallest, budget, space.base_cost) * 1.02
    if floor is None:
        return min(1.0, max(DEFAULT_FLOOR, reachable))
    share = float(floor.rstrip("%")) / 100
    if share > tightest * (1 + 1e-9):
        raise ValueError(
            f"search.floor {floor} is above the tightest budget limit ({tightest:.1%} of the base model); "
            'use floor = "cap" for candidates at the cap only'
        )
    level = share / tightest
    if level < reachable:
        raise ValueError(
            f"search.floor {floor} is below the smallest cost this model can be pruned to "
            f"({reachable * tightest:.1%} of the base model on the tightest limit)"
        )
    return min(1.0, level)


def preparation(config: Config) -> list[Evaluator]:
    """What comes before the fine-tune: BN recalibration, then ``evaluate.recipe``'s steps (block-wise training)."""
    from evaluators import BNRecalibration
    from search._recipes import recipe

    e = config.evaluate
    return [BNRecalibration(e.bn_batches), *recipe(e.recipe).steps(e)]


def default_evaluator(config: Config) -> Evaluator:
    """BN recalibration, quick fine-tune (KD optional), accuracy, and latency when asked or an objective."""
    from evaluators import Accuracy, FineTune, Latency, Pipeline

    e = config.evaluate
    steps: list[Evaluator] = [
        *preparation(config),
        FineTune(steps=e.finetune_steps, lr=e.lr, kd_weight=e.kd_weight, eval_every=e.eval_every),
        Accuracy(),
    ]
    if e.latency or (Objective.LATENCY in config.search.objectives and not predicts_latency(config)):
        steps.append(Latency(batch_sizes=(1,), runs=20, warmup=5, runtime=config.evaluate.runtime))
    return Pipeline(steps)


def prepare(
    config: Config,
    *,
    store: StudyStore | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = False,
) -> Prepared:
    """Build the study's :class:`Prepared` (the store and evaluator default to the config's); the study's row
    is written last, once the budget is known to be feasible."""
    from search.sampling._params import distributions
    from storage import StudyStore

    name, budget = _checked(config)
    if store is None:
        store = StudyStore(config.storage.url)  # malformed / unreachable URL: fails before any work
    cfg, parts = _model_parts(config, store, name, progress)
    space: ModelSpace = parts["space"]
    uniform = space.fit(space.uniform_plan(0.0), budget)  # infeasible budget: raises here
    parts["pool"] = teacher_pool(cfg, parts["data"], parts["base_model"])  # the study's, not finalize's
    floor = cost_floor(cfg.search.floor, space, budget)
    dists = distributions(space, cfg.space.options(), floor=floor)
    study_id = store.ensure_study(
        name,
        model_spec=cfg.model.spec,
        data_spec=parts["data"].spec,
        budget=budget.to_dict(),
        space_options=_study_spec(cfg, parts["data"], parts["base_weights"]),
        base_cost=space.base_cost.as_dict(),
        base_accuracy=parts["base_accuracy"],
    )
    return Prepared(
        **parts,
        config=cfg,
        study=name,
        study_id=study_id,
        store=store,
        evaluator=evaluator if evaluator is not None else default_evaluator(cfg),
        objectives=tuple(Objective(o) for o in cfg.search.objectives),
        budget=budget,
        uniform=uniform,
        dists=dists,
        floor=floor,
        rungs=cfg.evaluate.rung_steps(),
    )


def prepare_worker(config: Config, *, progress: bool = False) -> Worker:
    """What training one candidate of the config's *existing* study needs (``finalize``): its store row, the
    base model, the data and the space; no sampler, no evaluator, nothing written to the study's row."""
    from storage import StudyStore

    name, _ = _checked(config)
    StudyStore.open_existing(config.storage.url).study(name)  # read-only: a study that does not exist is one line
    store = StudyStore(config.storage.url)  # finalize writes each candidate's test accuracy
    study_id = store.study(name).id
    cfg, parts = _model_parts(config, store, name, progress)
    return Worker(**parts, config=cfg, study=name, study_id=study_id, store=store)


def _model_parts(cfg: Config, store: StudyStore, name: str, progress: bool) -> tuple[Config, dict[str, Any]]:
    """The data, the trained base model and its space (device profile, importance scores): a :class:`Worker`'s
    fields but the study's own, and the config with ``round_to = "auto"`` resolved."""
    from evaluators import load_data, resolve_device
    from spaces import ModelSpace

    device = resolve_device(cfg.evaluate.device)
    data = load_data(cfg.data.spec, data_dir=cfg.data.data_dir, seed=cfg.data.seed)
    model, base_accuracy, base_weights = _base_model(cfg, data, device, progress)
    base_model = model.eval()  # the distillation teacher (on ``device`` below); the space copies it
    space = ModelSpace(model.cpu(), data.example_inputs(1), **cfg.space.space_kwargs())
    cfg = _with_profile(cfg, space, store, device, name)  # a latency budget, round_to = "auto": the device profile
    if Importance(cfg.space.importance).needs_data:
        importance_scores(cfg, space, data, base_weights)
    base_model.to(device)
    parts = {"data": data, "device": device, "base_model": base_model, "base_accuracy": base_accuracy}
    parts |= {"space": space, "base_cost": space.base_cost, "base_weights": base_weights}
    return cfg, parts | {"artifacts": Path(cfg.search.artifacts_dir) / "studies" / name}


def teacher_pool(cfg: Config, data: DataBundle, base_model: nn.Module) -> TeacherPool | None:
    """For ``evaluate.score = "kl"``: ``evaluate.teacher_pool`` training images (default a fifth, at most 5,000)
    taken out of every fine-tune of the study (:meth:`evaluators.DataBundle.hold_out_pool`, seeded by the data)
    and the dense model's outputs on them (:class:`evaluators.TeacherPool`); ``None`` for the other scores.
    ``finalize`` trains on the whole training split (it selects nothing). The pool's images are held in memory
    (5,000 Fashion-MNIST images: 16 MB; at 224 pixels, 3 GB: set ``evaluate.teacher_pool`` lower)."""
    from evaluators import TeacherPool

    if cfg.evaluate.score != "kl":
        return None
    size = len(data.train)  # type: ignore[arg-type]
    n = cfg.evaluate.teacher_pool if cfg.evaluate.teacher_pool is not None else max(2, min(5000, size // 5))
    return TeacherPool.build(base_model, data.hold_out_pool(n), batch_size=cfg.evaluate.batch_size)


def importance_scores(cfg: Config, space: ModelSpace, data: DataBundle, base_weights: Path) -> Path:
    """Give ``space`` the scores of the config's data-aware criterion: from the cache, or computed and cached.

    Computed once per base model, data and criterion on ``space.calibration_samples``
    training images (the data's seeded order), and kept beside the baselines as
    ``artifacts/baselines/importance-<key>.safetensors``; every later study,
    worker and ``finalize`` reads them, so a plan keeps the same channels everywhere.
    """
    import hashlib

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from storage import file_sha256

    crit, n = str(cfg.space.importance), cfg.space.calibration_samples
    key = hashlib.sha256(f"{file_sha256(base_weights)}|{data.spec}|{cfg.data.seed}|{crit}|{n}".encode()).hexdigest()
    path = Path(cfg.search.artifacts_dir) / "baselines" / f"importance-{key[:16]}.safetensors"
    if path.is_file():
        try:
            space.load_importance(crit, {k: v.numpy() for k, v in load_file(path).items()})
            return path
        except (SafetensorError, ValueError, OSError):
            pass  # damaged or from another space: computed again below
    scores = space.calibrate_importance(crit, _calibration_batches(data, n, cfg.data.seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with protected():  # Ctrl-C waits: no temporary file is left behind
        save_file({k: torch.from_numpy(v.copy()) for k, v in scores.items()}, str(tmp))
        os.replace(tmp, path)  # atomic: concurrent workers write the same scores
    return path


def allocator_sensitivity(p: Prepared, options: Mapping[str, Any] | None = None) -> Sensitivity:
    """The measured sensitivity the allocator's seed plans are valued by: from the cache, or measured and cached.

    Each group pruned alone to :data:`spaces.SENSITIVITY_RATIOS` of its channels and to one,
    BatchNorm recalibrated (5 batches), the loss taken on the first
    ``space.calibration_samples`` validation images (what the search scores
    on; the test split is never read). Kept beside the baselines as
    ``artifacts/baselines/sensitivity-<key>.json``, keyed by the base weights,
    the data and the space's options, so every later study of the same base
    model reads it. ``options`` (the allocator's, from the plan dimensions'
    ``allocator_options``) add the other dimensions' choices (each layer alone
    at 8 and at 4 bits, ...) to the table and to its key.
    """
    import hashlib

    from spaces import SENSITIVITY_RATIOS, Sensitivity
    from storage import file_sha256

    cfg, sp = p.config, p.config.space
    weights = file_sha256(p.base_weights) if p.base_weights is not None else p.study
    parts: tuple[Any, ...] = (weights, p.data.spec, cfg.data.seed, sp.importance, sp.round_to, sp.ignored_layers)
    if options:
        parts += (sorted(options.items()),)  # absent without options: older tables keep their key
    key = hashlib.sha256(
        repr((*parts, sp.calibration_samples, SENSITIVITY_RATIOS, cfg.evaluate.batch_size)).encode()
    ).hexdigest()
    path = Path(cfg.search.artifacts_dir) / "baselines" / f"sensitivity-{key[:16]}.json"
    if path.is_file():
        try:
            return Sensitivity.from_json(path.read_text())
        except (ValueError, KeyError, TypeError, OSError):
            pass  # damaged: measured again below
    table = p.space.sensitivity(_loss_of(p), options=options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with protected():  # Ctrl-C waits: no temporary file is left behind
        tmp.write_text(table.to_json())
        os.replace(tmp, path)  # atomic: concurrent workers write the same table
    return table


def _loss_of(p: Prepared) -> Callable[[nn.Module], float]:
    """A model's validation loss after BatchNorm recalibration (on ``space.calibration_samples`` images)."""
    from evaluators import Accuracy, BNRecalibration, Context, Pipeline

    e = p.config.evaluate
    ctx = Context(
        data=p.data,
        device=p.device,
        seed=e.seed,
        batch_size=e.batch_size,
        max_val_samples=p.config.space.calibration_samples,
    )
    recipe = Pipeline([BNRecalibration(min(5, e.bn_batches)), Accuracy()])

    def loss(model: nn.Module) -> float:
        m = recipe.evaluate(model.to(p.device), ctx)
        return float(m.loss) if m.loss is not None and m.loss == m.loss else float("inf")

    return loss


def _calibration_batches(data: DataBundle, samples: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``samples`` training images (in the seeded order), in batches of up to 64, on the CPU."""
    left = samples
    for x, y in data.train_loader(min(64, samples), seed):
        if left <= 0:
            return
        yield x[:left].cpu(), y[:left].cpu()
        left -= len(x)


def _base_model(cfg: Config, data: DataBundle, device: torch.device, progress: bool) -> tuple[nn.Module, float, Path]:
    """The model to compress, its validation accuracy and its weights file: the config's, or a trained baseline."""
    from evaluators import Context, Recipe, build_model, evaluate_accuracy, load_weights, train_baseline

    if cfg.model.weights:
        model = build_model(cfg.model.spec, in_channels=data.in_channels, num_classes=data.num_classes)
        load_weights(model, cfg.model.weights)
        ctx = Context(data=data, device=device, batch_size=cfg.evaluate.batch_size)
        accuracy, _ = evaluate_accuracy(model.to(device), ctx)
        return model, accuracy, Path(cfg.model.weights)
    recipe = Recipe(epochs=cfg.model.train_epochs, lr=cfg.model.train_lr, batch_size=cfg.model.train_batch_size)
    base = train_baseline(
        cfg.model.spec,
        data,
        recipe=recipe,
        seed=cfg.model.train_seed,
        artifacts_dir=cfg.search.artifacts_dir,
        device=device,
        progress=progress,
    )
    return base.model, base.accuracy, base.path


def _checked(cfg: Config) -> tuple[str, Budget]:
    """What needs no work to check (the study's name, the budget: one-line errors); threads."""
    import torch

    from spaces import Budget

    if cfg.search.study is None:
        raise UsageError("search.study names the study: set it (load_config takes the config file's stem)")
    budget = Budget.from_dict(cfg.budget_dict())
    if cfg.evaluate.threads is not None:
        torch.set_num_threads(cfg.evaluate.threads)
    return cfg.search.study, budget


def _study_spec(cfg: Config, data: DataBundle, base_weights: Path) -> StudySpec:
    """What the store records of the study's space and data (what reports and exports rebuild it from)."""
    from storage import StudySpec

    return StudySpec(
        space=cfg.space.model_dump(mode="json"),
        input_shape=tuple(data.input_shape),
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        has_test=data.test is not None,
        base_weights=str(base_weights.resolve()),  # what reports read the base model's filters from
        score=cfg.evaluate.score,
    )


def _with_profile(cfg: Config, space: ModelSpace, store: StudyStore, device: torch.device, study: str) -> Config:
    """Attach the study's device profile to ``space`` (measured once, then read from the store; the study's own
    refit of it once its front was measured, :mod:`search.study._remeasure`) and resolve
    ``space.round_to = "auto"`` to the profile's channel multiple (the config returned says which); ``cfg``
    itself when the study needs no profile."""
    import torch

    if not needs_profile(cfg):
        return cfg
    if predicts_latency(cfg) and cfg.space.quantize != "none":
        raise UsageError(
            'budget.latency is predicted for pruning and factorization plans: set space.quantize = "none", or limit '
            "macs or bytes (the latency objective alone is measured per candidate with bits)"
        )
    profile, _ = device_profile(
        space,
        store,
        device=device,
        threads=torch.get_num_threads(),
        runtime=cfg.evaluate.runtime,
        methods=profiled_methods(cfg) if predicts_latency(cfg) else [],
    )
    refit = store.study_profile(study, profile.key)
    space.attach_profile(profile if refit is None else type(profile).from_json(refit))
    if cfg.space.round_to != "auto":
        return cfg
    space.set_round_to(profile.multiple)
    return cfg.model_copy(update={"space": cfg.space.model_copy(update={"round_to": profile.multiple})})
