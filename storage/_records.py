"""Typed records that cross the packages' seams; the store keeps them as JSON columns (unchanged schema).

* :class:`StudySpec` — what a study searches and on which data (the study row's
  ``space_options``): the config's ``[space]`` options, the data's input shape
  and classes, whether it has a test split, the base weights' file;
* :class:`FinalResult` — what ``prunetune finalize`` measured of a candidate
  (the candidate row's ``final``);
* :class:`PhaseTimes` — seconds of a candidate's life per phase (``phases``).

Each has ``from_json`` (what the store reads, tolerant of rows written before
a field existed) and ``to_json`` (what it writes); ``search`` builds them,
``storage``'s reports and ``search``'s readers use their attributes instead of
dictionary keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PHASES", "FinalResult", "PhaseTimes", "StudySpec"]

PHASES = ("apply", "train", "eval", "other")  # seconds of a candidate's life, as the runner records them


@dataclass(frozen=True)
class StudySpec:
    """What a study searches and on which data (stored flat, as the study row's ``space_options``)."""

    space: dict[str, Any] = field(default_factory=dict)  # the config's [space]: importance, round_to, rank, ...
    input_shape: tuple[int, ...] | None = None  # one example, without the batch (None: not recorded)
    in_channels: int | None = None
    num_classes: int | None = None
    has_test: bool = True
    base_weights: str | None = None  # the base model's weights file (what reports read its filters from)
    score: str = "accuracy"  # the config's evaluate.score: what ranks candidates at a rung and picks "best"

    _OWN = ("input_shape", "in_channels", "num_classes", "has_test", "base_weights", "score")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudySpec:
        own = {k: data[k] for k in cls._OWN if k in data}
        if own.get("input_shape") is not None:
            own["input_shape"] = tuple(int(v) for v in own["input_shape"])
        return cls(space={k: v for k, v in data.items() if k not in cls._OWN}, **own)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.space,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "has_test": self.has_test,
            "base_weights": self.base_weights,
            "score": self.score,
        }

    @property
    def importance(self) -> str:
        return str(self.space.get("importance", "l1"))

    @property
    def round_to(self) -> int:
        return int(self.space.get("round_to", 1))

    @property
    def ignored_layers(self) -> list[str]:
        return list(self.space.get("ignored_layers", []))


@dataclass(frozen=True)
class FinalResult:
    """What ``prunetune finalize`` measured of a candidate: the long recipe's accuracies and weights file."""

    steps: int
    kd_weight: float
    val_accuracy: float
    test_accuracy: float | None  # None: the data has no test split
    artifact: str
    weights_sha256: str | None  # None only if the weights file was gone when it was recorded

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FinalResult:
        return cls(
            steps=int(data["steps"]),
            kd_weight=float(data["kd_weight"]),
            val_accuracy=float(data["val_accuracy"]),
            test_accuracy=None if data.get("test_accuracy") is None else float(data["test_accuracy"]),
            artifact=str(data["artifact"]),
            weights_sha256=None if data.get("weights_sha256") is None else str(data["weights_sha256"]),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds of a candidate's life per phase: surgery, fine-tune, evaluation, the rest (None: not recorded)."""

    apply: float | None = None
    train: float | None = None
    eval: float | None = None
    other: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseTimes:
        return cls(**{k: float(data[k]) for k in PHASES if data.get(k) is not None})

    def to_json(self) -> dict[str, float]:
        """The recorded phases only (as the store has always kept them)."""
        return {k: v for k, v in asdict(self).items() if v is not None}
