"""The run configuration: one TOML file, validated by pydantic, every key overridable by a flag.

Sections: ``model``, ``data``, ``budget``, ``space``, ``evaluate``, ``search``,
``storage``, ``ray`` (read when ``search.backend = "ray"``). Unknown keys are
errors. A flag ``--section.key VALUE`` overrides the file
(``--search.candidates 10``, ``--storage.url sqlite:///x.db``, ``--search.backend ray``;
lists are comma-separated: ``--search.objectives accuracy,macs,params``).
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from search.drivers import driver_names  # the registry (light: a driver loads when chosen)
from spaces import Importance, Method, Objective

__all__ = ["Config", "config_flags", "legacy_flags", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1.5h"``, or a bare number of seconds (``"1800"``), in
    seconds; each unit at most once; a one-line ``ValueError`` otherwise."""
    import re

    compact = re.sub(r"\s+", "", text.strip().lower())
    if re.fullmatch(r"\d+(\.\d+)?", compact):
        compact += "s"
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", compact)
    units = [u for _, u in parts]
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not parts or "".join(n + u for n, u in parts) != compact or len(set(units)) < len(units) or seconds <= 0:
        raise ValueError(f'time must be a positive duration like "90s", "30m", "2h" or "1h30m", got {text!r}')
    return seconds


def missing_onnx() -> list[str]:
    """The modules of the ``[onnx]`` extra (torch's exporter, ONNX Runtime) that are not installed."""
    return [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]


class ModelConfig(_Section):
    """The model to compress and, when no weights are given, how to train its baseline."""

    spec: str = Field(
        description="zoo:<name>, torchvision:<name>, timm:<name>[,key=value...] or package.module:factory"
    )
    weights: str | None = Field(None, description="trained weights (.safetensors or weights-only torch file)")
    train_epochs: int = Field(30, ge=1, description="baseline training epochs when no weights are given")
    train_lr: float = Field(
        0.1, gt=0, description="baseline training: peak learning rate (SGD with warm-up and cosine decay)"
    )
    train_batch_size: int = Field(64, ge=1, description="baseline training: images per step")
    train_seed: int = Field(0, description="baseline training: seed (the cached baseline is keyed by it)")


class DataConfig(_Section):
    spec: str = Field(description="digits, fashion-mnist, synthetic, imagefolder:/path or package.module:factory")
    data_dir: str | None = Field(None, description="where fashion-mnist's idx files are (default: Debian's path)")
    seed: int = Field(0, description="train/validation/test split seed (digits, fashion-mnist)")


class BudgetConfig(_Section):
    """Limits relative to the base model ("40%") or absolute ("300M", "8MB", "3ms"); at least one."""

    macs: str | float | None = Field(None, description='multiply-accumulates per image: "40%" of the base or "300M"')
    params: str | float | None = Field(None, description='parameters: "40%" of the base or "1.2M"')
    bytes: str | float | None = Field(
        None, description='weight bytes at their bit widths, scales included: "40%" of the base or "8MB"'
    )
    latency: str | float | None = Field(
        None,
        description='predicted batch-1 latency on this machine, "60%" of the base model or "3ms" (a device '
        "profile is measured once and stored: `prunetune profile`; pruning and factorization plans, not bits)",
    )


class SpaceConfig(_Section):
    """What may change: how channels are chosen (below), and a `[space.<key>]` table per dimension with
    options (`[space.prune]`, always on; `[space.rank]`, `[space.bits]`, `[space.depth]` and a plug-in's), which
    turns the dimension on. The flat keys of older configs (max_ratio, sample_by, rank, method, methods,
    quantize) still load into their tables, with a one-line note naming the table.

    The tables hold each dimension's typed options (:attr:`spaces.dimensions.Dimension.options`).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _dimension_tables(cls, data: Any) -> Any:
        """Every key that is not one of the fields must be the table of a dimension with typed options."""
        if not isinstance(data, dict):
            return data
        tables = dimension_tables()
        out = {"prune": {}, **_flat_keys(dict(data))}  # pruning is always on, and first
        for key, value in list(out.items()):
            if key in cls.model_fields:
                continue
            if key not in tables:
                raise ValueError(_unknown(f"space.{key}", key, [*cls.model_fields, *tables]))
            if not isinstance(value, (dict, BaseModel)):
                raise ValueError(f"[space.{key}] must be a table of {key}'s options, got {value!r}")
            out[key] = _table(key, tables[key], value)
        return out

    def tables(self) -> dict[str, BaseModel]:
        """The dimensions turned on (pruning first), each with its validated options."""
        return dict(self.model_extra or {})

    def table(self, key: str) -> Any:
        """Dimension ``key``'s typed options, or None when its table is absent (the dimension is off)."""
        return self.tables().get(key)

    def options(self) -> dict[str, Any]:
        """What the dimensions' roles read: each table's typed options under its key, and the flat view below."""
        flat = {"max_ratio": self.max_ratio, "sample_by": self.sample_by, "method": self.method.value}
        flat |= {"methods": [m.value for m in self.methods], "quantize": self.quantize, "rank": self.rank}
        return self.model_dump(mode="json", exclude=set(self.tables())) | flat | self.tables()

    # the flat view of the built-in tables, which the study's code reads (one default per option: the table's)
    @property
    def max_ratio(self) -> float:
        return float(self.table("prune").max_ratio)

    @property
    def sample_by(self) -> str:
        return str(self.table("prune").sample_by)

    @property
    def rank(self) -> bool:
        """Whether ranks are searched (``[space.rank]`` present)."""
        return self.table("rank") is not None

    @property
    def method(self) -> Method:
        rank = self.table("rank")
        return Method(rank.method if rank is not None else _default("rank", "method"))

    @property
    def methods(self) -> list[Method]:
        rank = self.table("rank")
        return [Method(m) for m in rank.methods] if rank is not None else []

    @property
    def quantize(self) -> str:
        """``"none"``, or with ``[space.bits]`` ``"weights"`` / ``"weights+activations"``."""
        bits = self.table("bits")
        return "none" if bits is None else str(bits.mode)

    importance: Importance = Field(
        Importance.GROUP_L2,
        description="which channels a group keeps: torch-pruning's group_l2 (default: best in bench_importance.py), "
        "group_l1, lamp; l1, l2, bn_scale (producers only); the data-aware taylor, hessian (computed once on "
        "calibration_samples training images, cached)",
    )
    calibration_samples: int = Field(256, ge=1, description="training images the data-aware criteria read")
    round_to: int | Literal["auto"] = Field(
        1,
        description='kept channel counts are rounded to multiples of this; "auto": the multiple beyond which '
        "this machine gains no speed, found by the device profile",
    )

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, v: Any) -> int | str:
        if v == "auto":
            return v
        try:
            n = int(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else 0
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError('round_to must be an integer >= 1 or "auto"')
        return n

    ignored_layers: list[str] = Field(
        default_factory=list, description="layers whose output channels are never pruned (module names)"
    )

    def space_kwargs(self) -> dict[str, Any]:
        """The :class:`spaces.ModelSpace` options of this ``[space]`` (``round_to = "auto"`` starts at 1)."""
        round_to = self.round_to if isinstance(self.round_to, int) else 1
        return {"importance": self.importance, "round_to": round_to, "ignored_layers": self.ignored_layers}

    def active(self) -> list[str]:
        """The dimensions this ``[space]`` searches: pruning, and every other table present."""
        return list(self.tables())

    @model_validator(mode="after")
    def _relations(self) -> SpaceConfig:
        """Every dimension's declared relations (requires, conflicts), in one message."""
        from spaces.dimensions import check_relations

        check_relations(self.active(), where="[space]")
        return self


_noted: set[str] = set()
_pending: dict[str, str] = {}


def legacy_flags() -> list[tuple[str, bool]]:
    """``(space.key, is_list)`` for the flat keys of older configs, which the options models still read."""
    out = []
    for model in dimension_tables().values():
        for key in getattr(model, "flat_keys", {}):
            field = model.model_fields.get(key)
            out.append((f"space.{key}", field is not None and "list[" in str(field.annotation)))
    return out


def _note(key: str, text: str) -> None:
    """Note that a flat key was read into its table; :func:`load_config` says so once it has loaded."""
    if key not in _noted:
        _pending[key] = text


def _say_notes() -> None:
    """The pending notes, one line each on stderr (through the ``prunetune`` logger), once per process and key."""
    import logging

    for key, text in _pending.items():
        _noted.add(key)
        logging.getLogger("prunetune").warning("prunetune: note: %s", text)
    _pending.clear()


def _flat_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``[space]``) with the flat keys of older configs moved into their tables.

    An options model that reads flat keys declares them (``flat_keys``: key to what it became) and says which
    table they ask for (``from_flat(flat, present)``: a table to merge, or None: the dimension is off).
    """
    for table, model in dimension_tables().items():
        keys: dict[str, str] = getattr(model, "flat_keys", {})
        flat = {k: data.pop(k) for k in list(keys) if k in data and not isinstance(data[k], (dict, BaseModel))}
        if not flat:
            continue
        for k in flat:
            _note(k, f"space.{k} is read as [space.{table}] {keys[k]}; write it there")
        present = isinstance(data.get(table), (dict, BaseModel))
        try:
            values = model.from_flat(flat, present=present)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise ValueError(_table_error(table, model, exc)) from None
        current = data.get(table)
        if values is None:
            data.pop(table, None)
        else:
            data[table] = {**(current if isinstance(current, dict) else {}), **values}  # a flag wins, as flags do
    return data


def _default(table: str, name: str) -> Any:
    """The default of option ``name`` of ``[space.<table>]``: the one its model declares."""
    return dimension_tables()[table].model_fields[name].default


class EvaluateConfig(_Section):
    """How a candidate is scored: BN recalibration, fine-tune (per rung), accuracy; and finalize's long recipe."""

    bn_batches: int = Field(20, ge=1, description="training batches that recalibrate BatchNorm statistics first")
    finetune_steps: int = Field(100, ge=0, description="fine-tune steps per candidate (without rungs)")
    lr: float = Field(0.01, gt=0, description="fine-tune learning rate (cosine schedule)")
    kd_weight: float = Field(
        0.0, ge=0, le=1, description="weight of distillation from the dense model in the fine-tune loss (0: none)"
    )
    batch_size: int = Field(128, ge=1, description="images per fine-tune step and per scoring batch")
    eval_every: int = Field(25, ge=0, description="intermediate accuracy every N steps (0: never)")
    rungs: list[int] = Field(
        default_factory=list,
        description="fine-tune steps per rung of successive halving, e.g. 50,200,800 (empty: one rung of "
        "finetune_steps)",
    )
    reduction_factor: int = Field(3, ge=2, description="a rung promotes the best 1/N of the candidates that reach it")
    max_val_samples: int | None = Field(
        None, ge=1, description="validation images per score (below the top rung only, when there are rungs)"
    )
    score: Literal["accuracy", "loss", "kl"] = Field(
        "accuracy",
        description="what ranks candidates at a rung (promotion, re-scoring) and picks the best within the cap: "
        "validation accuracy, the validation cross-entropy (finer where accuracies tie), or kl: the divergence "
        "from the dense model's outputs on a pool of training images no fine-tune uses (evaluate.teacher_pool)",
    )
    teacher_pool: int | None = Field(
        None,
        ge=2,
        description="training images held out of every fine-tune for score = kl, the dense model's outputs on "
        "them computed once (default: a fifth of the training images, at most 5,000)",
    )
    promote_ties: bool = Field(
        True,
        description="a candidate just below a rung's cut goes on too when a promoted one beats it by less than two "
        "paired standard errors on the same images (the rung's validation images, or the teacher's pool for score = "
        "kl); a candidate ranked beyond the next share never does",
    )
    rescore_top: int = Field(
        0,
        ge=0,
        description="re-score the best N at the top rung with a longer fine-tune, as a rung of its own, with up to "
        "N more that the N-th does not beat beyond its noise (0: off)",
    )
    rescore_steps: int | None = Field(
        None, ge=1, description="fine-tune steps in all of the re-scoring rung (default: four times the top rung's)"
    )
    recipe: str = Field(
        "finetune",
        description="how a compressed model is trained, for candidates and by finalize: BN recalibration then the "
        "fine-tune, or 'blockwise': BN recalibration, each changed block taught to reproduce the original block's "
        "output (tensor-train's sequential training), then the fine-tune; or a plug-in's (prunetune.recipes)",
    )

    @field_validator("recipe", "runtime")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        """A recipe or a runtime must be one of its registry's names (built-ins and plug-ins)."""
        from search._recipes import recipe_names
        from spaces import runtime_names

        names = recipe_names() if info.field_name == "recipe" else runtime_names()
        if v not in names:
            raise ValueError(f"{info.field_name} must be one of {', '.join(names)}")
        return v

    blockwise_steps: int = Field(100, ge=1, description="Adam steps per changed block of the blockwise recipe")
    final_steps: int = Field(2000, ge=1, description="fine-tune steps of `prunetune finalize` (the long recipe)")
    final_kd_weight: float = Field(0.5, ge=0, le=1, description="distillation weight of `prunetune finalize`")
    latency: bool = Field(
        False,
        description="measure batch-1 latency of every candidate (else the latency objective is the device "
        "profile's prediction)",
    )
    runtime: str = Field(
        "torch",
        description="the runtime latency is profiled and measured in: torch (eager), onnxruntime (the model "
        "exported by torch's exporter, CPU; the [onnx] extra), or a plug-in's (entry points prunetune.runtimes)",
    )

    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    threads: int | None = Field(
        None, ge=1, description="CPU threads per worker (default: torch's; 1 when workers share a machine)"
    )
    seed: int = Field(0, description="seed of the fine-tunes and the scoring subsets")

    @model_validator(mode="after")
    def _runtime_on_cpu(self) -> EvaluateConfig:
        if self.runtime != "onnxruntime":
            return self
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"evaluate.runtime 'onnxruntime' times the CPU, got evaluate.device {self.device!r}")
        if missing := missing_onnx():
            raise ValueError(
                f"evaluate.runtime 'onnxruntime' needs {', '.join(missing)}: pip install 'prunetune[onnx]'"
            )
        return self

    @model_validator(mode="after")
    def _pool(self) -> EvaluateConfig:
        if self.teacher_pool is not None and self.score != "kl":
            raise ValueError(f"evaluate.teacher_pool is read only with evaluate.score = 'kl', not {self.score!r}")
        return self

    def needs_teacher(self, kd_weight: float) -> bool:
        """Whether an evaluation distilling with ``kd_weight`` needs the original model (block-wise training does)."""
        from search._recipes import recipe

        return kd_weight > 0 or recipe(self.recipe).needs_teacher

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v) or any(b <= a for a, b in itertools.pairwise(v)) or len(v) > 6:
            raise ValueError(f"rungs must be at most 6 increasing positive step counts like [50, 200, 800], got {v}")
        return v

    def rung_steps(self) -> tuple[int, ...]:
        """Cumulative fine-tune steps at the end of each rung."""
        return tuple(self.rungs) if self.rungs else (self.finetune_steps,)


class SearchConfig(_Section):
    study: str | None = Field(None, description="study name (default: the config file's stem)")
    candidates: int = Field(30, ge=1, description="candidates the study evaluates in total, over all workers")
    sampler: str = Field(
        "tpe",
        description="the sampler that proposes plans: tpe, nsga2, gp (Optuna's GPSampler), evolve (an "
        "evolutionary level search, EvoPress-style), random, or a plug-in's (prunetune.samplers)",
    )
    objectives: list[Objective] = Field(
        [Objective.ACCURACY, Objective.MACS],
        description="what the front trades: accuracy first, then one or more costs (perplexity and memory are "
        'the objectives of language-model studies, task = "decoder")',
    )
    floor: str | None = Field(
        None,
        description="lowest cost level a candidate is repaired onto, a percentage of the base model on the tightest "
        'limit ("10%"), or "cap" (every candidate at the cap); default: a quarter of the tightest limit',
    )
    seed_plans: list[Literal["allocator", "uniform", "global"]] = Field(
        ["allocator", "uniform", "global"],
        description="plans evaluated first: the allocator's, the uniform one, and the global-ranking one (every "
        "channel ranked across groups, as torch-pruning's global pruning), each at every seed level",
    )
    seed_levels: int = Field(
        3,
        ge=1,
        description="cost levels the seed plans are placed at, log-spaced from the cap down to the floor (1: the "
        'cap only; a study with floor = "cap" has one), so the front starts from the strong one-shot plans at '
        "every level",
    )
    allocator: Literal["sensitivity", "importance"] = Field(
        "sensitivity",
        description="what the allocator's seed plans value a group's channels by: the measured loss rise when the "
        "group alone is pruned (computed once per base model, cached), or the importance shares (always with "
        "space.rank, whose ranks are valued by energy shares)",
    )
    seed: int = Field(0, description="seed of the sampler (and of the study's other random choices)")
    worker: int = Field(0, ge=0, description="distinct number per parallel worker (salts the sampler)")
    artifacts_dir: str = Field("artifacts", description="baselines and candidates' weights (shared by every node)")
    time: str | None = Field(
        None,
        description='wall-clock limit of a run ("90s", "30m", "2h", "1h30m"): no candidate starts that cannot end '
        "before it, with room left for the re-scoring rung; then the run ends cleanly and says it stopped on time "
        "(a rerun goes on, within the same limit again)",
    )
    backend: str = Field(
        "local",
        description="who schedules the candidates: a registered driver, local (this process) or ray (see [ray])",
    )

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from search.sampling._samplers import check_sampler_name

        return check_sampler_name(v)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in driver_names():
            raise ValueError("Input should be " + " or ".join(repr(n) for n in driver_names()))
        return v

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)  # a bare number in a TOML file: seconds
        if isinstance(v, str):
            duration_seconds(v)  # raises the one-line message
        return v

    @property
    def time_s(self) -> float | None:
        """``time`` in seconds (``None``: no limit)."""
        return None if self.time is None else duration_seconds(self.time)

    @field_validator("floor")
    @classmethod
    def _floor(cls, v: str | None) -> str | None:
        if v is None or v == "cap":
            return v
        text = v.strip()
        try:
            ok = text.endswith("%") and 0 < float(text[:-1]) <= 100
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f'floor must be a percentage of the base model like "10%", or "cap", got {v!r}')
        return text

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        if not v or v[0] is not Objective.ACCURACY or len(set(v)) != len(v) or len(v) < 2:
            shown = [o.value for o in v]
            raise ValueError(
                f"objectives must start with 'accuracy', add at least one cost and not repeat, got {shown}"
            )
        lm = [o.value for o in v if o in (Objective.PERPLEXITY, Objective.MEMORY)]
        if lm:
            raise ValueError(
                f'objective {lm[0]!r} belongs to language-model studies (task = "decoder"); a vision study '
                "trades accuracy against macs, params, bytes or latency"
            )
        return v


class RayConfig(_Section):
    """The Ray cluster that schedules candidates when ``search.backend = "ray"`` (``pip install prunetune[ray]``)."""

    address: str | None = Field(
        None,
        description="the head's HOST:PORT, e.g. 10.0.0.5:6379, or auto (default: $RAY_ADDRESS, else a new local Ray)",
    )
    node_ip: str | None = Field(
        None, description="this driver's IP as the cluster knows it (default: $PRUNETUNE_RAY_NODE_IP, else Ray's guess)"
    )
    cpus_per_candidate: float = Field(1.0, gt=0, description="logical CPUs each candidate reserves")
    gpus_per_candidate: float = Field(0.0, ge=0, description="GPUs each candidate reserves; 0.25: four share one")
    max_concurrent: int | None = Field(
        None, ge=1, description="candidates evaluated at once (default: as many as the cluster's resources hold)"
    )
    max_failures: int = Field(3, ge=0, description="times Ray Tune retries a candidate whose worker or node died")

    @field_validator("gpus_per_candidate")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpus_per_candidate must be a fraction below 1 or a whole number, got {v}")
        return v


class StorageConfig(_Section):
    url: str = Field(
        "sqlite:///prunetune.db", description="the study store: a SQLAlchemy URL (SQLite file, or PostgreSQL)"
    )
    grace_seconds: float = Field(300.0, gt=0, description="a RUNNING candidate without heartbeat this long is retried")


class Config(_Section):
    model: ModelConfig
    data: DataConfig
    budget: BudgetConfig
    space: SpaceConfig = Field(default_factory=lambda: SpaceConfig())
    evaluate: EvaluateConfig = Field(default_factory=lambda: EvaluateConfig())
    search: SearchConfig = Field(default_factory=lambda: SearchConfig())
    storage: StorageConfig = Field(default_factory=lambda: StorageConfig())
    ray: RayConfig = Field(default_factory=lambda: RayConfig())

    def budget_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.budget.model_dump().items() if v is not None}


_SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in Config.model_fields.items()
}


def config_flags() -> list[tuple[str, str, bool]]:
    """``(section.key, help, is_list)`` for every key: the flags that override the file."""
    tables = {f"space.{key}": model for key, model in dimension_tables().items()}  # a flag turns a table on too
    return [
        (f"{prefix}.{key}", field.description or "", "list[" in str(field.annotation))
        for prefix, model in {**_SECTIONS, **tables}.items()
        for key, field in model.model_fields.items()
    ]


def dimension_tables() -> dict[str, type[BaseModel]]:
    """The registered dimensions that declare typed options: key to options model (``[space.<key>]``)."""
    from spaces.dimensions import dimensions

    return {d.key: d.options for d in dimensions() if d.options is not None}


def _unknown(where: str, key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown config key {where!r}; {hint}valid keys here: {', '.join(sorted(valid))}"


def _table(key: str, model: type[BaseModel], value: Any) -> BaseModel:
    """``value`` validated as ``[space.<key>]`` (a one-line error naming the table and the nearest valid key)."""
    try:
        return model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
    except ValidationError as exc:
        raise ValueError(_table_error(key, model, exc)) from None


def _table_error(key: str, model: type[BaseModel], exc: ValidationError) -> str:
    """The first error of ``[space.<key>]``, in one line."""
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown(f"space.{key}.{name}", name, list(model.model_fields))
    msg = err["msg"].removeprefix("Value error, ")
    if not name:  # the table's own check: its message names the keys
        return f"[space.{key}]: {msg}"
    return f"[space.{key}] {name}: {msg} (got {err.get('input')!r})"


def _error(exc: ValidationError, source: str) -> ValueError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        section = str(err["loc"][0])
        inner = len(err["loc"]) > 1 and section in _SECTIONS
        valid = list(_SECTIONS[section].model_fields) if inner else list(_SECTIONS)
        return ValueError(f"{source}: {_unknown(where, str(err['loc'][-1]), valid)}")
    if err["type"] == "missing":
        return ValueError(f"{source}: config key {where!r} is required")
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), dict):  # a section's own check: its message names the key
        return ValueError(f"{source}: {msg}")
    return ValueError(f"{source}: config key {where!r}: {msg} (got {err.get('input')!r})")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (TOML), apply ``{"section.key": value}`` overrides, validate. One-line ValueError on bad input."""
    data: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ValueError(f"config file {str(p)!r} " + ("is a folder" if p.is_dir() else "does not exist"))
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{p}: not a TOML file (not UTF-8 text)") from None
        if data.get("task", "vision") != "vision":  # a plug-in task's config (search.tasks)
            raise ValueError(
                f"{p} is a task = {data['task']!r} config: `prunetune run` runs it and front, status, report and "
                "export read its study; this command takes vision configs"
            )
        data.pop("task", None)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not isinstance(data.setdefault(section, {}), dict):
            raise ValueError(f"{source}: config key {section!r} must be a table like [{section}]")
        table, dot, name = key.partition(".")
        if dot:  # a dimension's table: space.fp16.share
            current = data[section].setdefault(table, {})
            if isinstance(current, (bool, str)) and section == "space" and table in dimension_tables():
                data[section][table] = {}  # a flat toggle of an older config (rank = false): the flag's table wins
            elif not isinstance(current, dict):
                raise ValueError(f"{source}: config key {section}.{table!r} must be a table like [{section}.{table}]")
            data[section][table][name] = value
        else:
            data[section][key] = value
    _pending.clear()
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        _pending.clear()  # a config that does not load says only why
        raise _error(exc, source) from None
    if not cfg.budget_dict():
        _pending.clear()
        raise ValueError(f'{source}: [budget] needs at least one of macs, params, bytes (e.g. macs = "50%")')
    if cfg.search.study is None:
        cfg.search.study = Path(path).stem if path is not None else "prunetune"
    _say_notes()
    return cfg
