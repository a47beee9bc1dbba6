"""The config of a language-model study (``task = "decoder"``): pydantic sections, one default per key.

Sections: ``model``, ``data``, ``budget``, ``space``, ``evaluate``, ``search``,
``storage``. Unknown keys are one-line errors naming the nearest valid key, as
in the vision config; every key can be overridden by ``--section.key VALUE``.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from search._config import RayConfig

__all__ = ["DecoderConfig", "config_error", "decoder_flags", "load_decoder_config", "share_of"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def share_of(v: str | float, what: str = "a share") -> float:
    """A share of the dense model, ``"50%"`` or ``0.5`` (a string from a flag too), as a float in (0, 1]; a
    one-line ``ValueError`` naming ``what`` otherwise."""
    text = str(v).strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise ValueError(f'{what} must be a share of the dense model like "50%" or 0.5, got {v!r}')
    return share


class TeacherConfig(_Section):
    """The Llama-style teacher trained here when ``model.spec = "teacher:stdlib"`` (cached by a digest of
    these keys, the text and the recipe)."""

    layers: int = Field(4, ge=1, description="decoder layers of the teacher trained here (model.spec = teacher:stdlib)")
    width: int = Field(128, ge=8, description="hidden size of the teacher trained here")
    mlp: int = Field(384, ge=8, description="MLP intermediate size of the teacher trained here")
    heads: int = Field(8, ge=1, description="query heads of the teacher trained here")
    kv_heads: int = Field(2, ge=1, description="key-value heads of the teacher trained here (grouped-query attention)")
    steps: int = Field(1500, ge=1, description="training steps of the teacher (cached under search.artifacts_dir)")


class DecoderModelConfig(_Section):
    """The model searched: the teacher trained here, or a local ``transformers`` directory."""

    spec: str = Field(
        "teacher:stdlib",
        description="teacher:stdlib (a Llama-style teacher trained here on the standard library's source, cached), "
        "hf:PATH (a local transformers directory) or hf-tiny:FAMILY (random weights, for tests)",
    )
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig())


class DecoderDataConfig(_Section):
    """The text: the standard library's source in four splits by file (train, calibration, validation,
    held-out)."""

    spec: Literal["stdlib"] = Field("stdlib", description="the text: the standard library's source, byte tokens")
    max_bytes: int | None = Field(None, ge=1024, description="at most this many bytes per split (default: all)")


class MemoryBudget(_Section):
    """The memory budget: weights plus the KV cache at ``context`` tokens and ``batch`` sequences."""

    memory: str | float = Field(description='weights plus KV cache at context x batch: "50%" of the dense model')
    context: int = Field(1024, ge=1, description="tokens the KV cache is counted at (the context you serve)")
    batch: int = Field(1, ge=1, description="sequences the KV cache is counted for")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | float) -> str | float:
        share_of(v, "budget.memory")
        return v


class DecoderSpaceConfig(_Section):
    """What a plan may change: each layer's MLP channels and key-value groups (and, with ``depth``, layers; with
    ``bits``, weight bits; with ``rank``, low-rank projections)."""

    max_ratio: float = Field(0.95, gt=0, lt=1, description="largest share of a layer's MLP or key-value groups pruned")
    depth: bool = Field(False, description="also drop whole decoder layers (at most space.max_depth_share of them)")
    max_depth_share: float = Field(0.5, gt=0, lt=1, description="the largest share of layers a plan may drop")
    importance: Literal["wanda", "magnitude"] = Field(
        "wanda", description="what ranks structures: Wanda-sp's |W|·‖X‖ on calibration text, or weight magnitude"
    )
    bits: list[Literal[8, 4]] = Field(
        [],
        description="weight bits a layer's projections may take besides float32 (e.g. [8, 4]): the sampler picks "
        "per layer, and the memory counts them (ONNX Runtime's MatMulNBits runs them)",
    )
    rank: bool = Field(
        False,
        description="also factorize a layer's attention or MLP projections into two low-rank Linear layers: the "
        "sampler picks a rank per layer and kind, as a share of each projection's full rank (at or above "
        "break-even: dense)",
    )
    rank_method: Literal["whitened", "svd"] = Field(
        "whitened",
        description="how projections are factorized: activation-aware SVD whitened by the inputs' Gram matrix on "
        "calibration text (SVD-LLM), or plain truncated SVD",
    )
    calibration_windows: int = Field(
        128,
        ge=1,
        description="calibration windows (of evaluate.context tokens) the Wanda-sp scores and the whitened "
        "factorization read",
    )


class DecoderEvaluateConfig(_Section):
    """How a candidate is scored: a short recovery fine-tune, then perplexity on the validation split."""

    recovery_steps: int = Field(50, ge=0, description="recovery fine-tune steps per candidate (train split)")
    kd_weight: float = Field(1.0, ge=0, le=1, description="distillation weight of the recovery (KL on logits)")
    lr: float = Field(1e-3, gt=0, description="recovery learning rate (AdamW, warm-up then cosine)")
    batch_size: int = Field(8, ge=1, description="windows per recovery step")
    context: int = Field(128, ge=2, description="tokens per training and validation window")
    windows: int = Field(32, ge=1, description="validation windows the perplexity reads (what the search selects on)")
    seed: int = Field(0, description="seed of the recovery's data order")
    rescore_top: int = Field(
        3, ge=0, description="then the candidates with the lowest perplexity are recovered again, longer (0: none)"
    )
    rescore_steps: int = Field(200, ge=1, description="recovery steps of the re-scoring; the pick is made on them")
    speed: bool = Field(
        False,
        description="predict every candidate's prefill and decode tokens per second (torch on this machine's CPU, "
        "batch 1, prefill of budget.context tokens) with the decoder latency model `prunetune profile` measures "
        "and stores (measured first, a minute or more, when the store has none)",
    )


class DecoderSearchConfig(_Section):
    """The study: its name, size, sampler and the memory range its candidates span."""

    study: str | None = Field(None, description="study name (default: the config file's stem)")
    candidates: int = Field(20, ge=1, description="candidates the study evaluates in total")
    sampler: str = Field(
        "tpe",
        description="the sampler that proposes plans, from the same registry as a vision study's: tpe, nsga2, gp, "
        "evolve, random, or a plug-in's (prunetune.samplers)",
    )
    floor: str = Field("20%", description="the smallest memory a candidate is fitted onto, a share of the dense model")
    backend: Literal["local", "ray"] = Field(
        "local",
        description="where candidates are recovered: in this process, or as Ray Tune trials on the [ray] cluster "
        "(the store stays the record; pip install 'prunetune[ray]')",
    )
    seed: int = Field(0, description="seed of the sampler")
    artifacts_dir: str = Field("artifacts", description="where the teacher trained here is cached")

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from search.sampling._samplers import check_sampler_name

        return check_sampler_name(v)

    @field_validator("floor")
    @classmethod
    def _floor(cls, v: str) -> str:
        share_of(v, "search.floor")
        return v


class DecoderStorageConfig(_Section):
    """The study store (the same SQL store as vision studies)."""

    url: str = Field("sqlite:///prunetune.db", description="SQLAlchemy URL of the study store")


class DecoderConfig(_Section):
    task: Literal["decoder"] = "decoder"
    model: DecoderModelConfig = Field(default_factory=lambda: DecoderModelConfig())
    data: DecoderDataConfig = Field(default_factory=lambda: DecoderDataConfig())
    budget: MemoryBudget
    space: DecoderSpaceConfig = Field(default_factory=lambda: DecoderSpaceConfig())
    evaluate: DecoderEvaluateConfig = Field(default_factory=lambda: DecoderEvaluateConfig())
    search: DecoderSearchConfig = Field(default_factory=lambda: DecoderSearchConfig())
    storage: DecoderStorageConfig = Field(default_factory=lambda: DecoderStorageConfig())
    ray: RayConfig = Field(default_factory=lambda: RayConfig())  # search.backend = "ray": the cluster


def decoder_flags() -> list[tuple[str, str, bool]]:
    """``(section.key, help, is_list)`` of every scalar key (the ``--section.key`` overrides)."""
    out = []
    for section, field in DecoderConfig.model_fields.items():
        model = field.annotation
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            continue
        for key, f in model.model_fields.items():
            if not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)):
                out.append((f"{section}.{key}", f.description or "", False))
    return out


def config_error(exc: ValidationError, source: str) -> ValueError:
    """The first validation error, in one line naming the key (and the nearest valid one when misspelled)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        owner: Any = DecoderConfig
        for part in loc[:-1]:
            owner = owner.model_fields[part].annotation
        valid = list(owner.model_fields)
        near = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return ValueError(f"{source}: unknown config key {where!r}; {hint}valid keys here: {', '.join(valid)}")
    if err["type"] == "missing":
        return ValueError(f"{source}: config key {where!r} is required")
    msg = err["msg"].removeprefix("Value error, ")
    return ValueError(f"{source}: config key {where!r}: {msg} (got {err.get('input')!r})")


def load_decoder_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DecoderConfig:
    """Read ``path`` (TOML), apply ``{"section.key": value}`` overrides, validate (one-line ``ValueError``)."""
    p = Path(path)
    data = tomllib.loads(p.read_text(encoding="utf-8"))
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{p}: config key {section!r} must be a table like [{section}]")
        table[key] = value
    try:
        cfg = DecoderConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, str(p)) from None
    if cfg.search.study is None:
        cfg.search.study = p.stem
    return cfg
