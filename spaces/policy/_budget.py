"""``Budget``: limits on MACs, parameters, bytes and predicted latency.

A limit is an absolute number (``params=2_000_000``), a string with a unit
(``macs="300M"``, ``bytes="8MB"``, ``bytes="8MiB"``, ``latency="3ms"``) or a
percentage of the base model (``macs="40%"``, ``latency="60%"``). A bare
numeric string such as ``"40"`` is refused: it could mean 40 or 40 %. A
latency limit is in milliseconds (a number is milliseconds; units ``us``,
``ms``, ``s``) and is met by the *predicted* latency of a plan
(:attr:`spaces.Cost.latency`, from a device profile: :mod:`spaces.cost._latency`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spaces._errors import InputTypeError, PlanError
from spaces._vocab import COST_METRICS
from spaces.cost._cost import Cost

__all__ = ["Budget", "Limit"]

METRICS = (*COST_METRICS, "latency")  # what a budget may limit: the analytic costs and the predicted latency
_TIME_UNITS: dict[str, float] = {"US": 1e-3, "MS": 1.0, "S": 1e3}  # to milliseconds
_COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_BYTE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class Limit:
    """One limit: ``value`` absolute, or a fraction of the base when ``relative``."""

    value: float
    relative: bool = False

    def resolve(self, base: float) -> float:
        return self.value * base if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def _parse(metric: str, value: Any) -> Limit:
    example = {"bytes": 'a size like "8MB"', "latency": 'a time like "3ms"'}.get(metric, 'a count like "300M"')
    rule = f'budget {metric} must be a positive number, a percentage of the base model like "40%", or {example}'
    if isinstance(value, Limit):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputTypeError(f"{rule}; got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{rule}; got {value!r}")
        return Limit(float(value))
    m = _RE.match(value)
    if not m:
        raise ValueError(f"{rule}; got {value!r}")
    number, unit = float(m.group(1)), m.group(2).upper()
    if number <= 0:
        raise ValueError(f"{rule}; got {value!r}")
    if unit == "%":
        if number > 100:
            raise ValueError(
                f"budget {metric} must be at most 100% of the base model, got {value!r}: "
                "a larger budget leaves nothing to compress"
            )
        return Limit(number / 100.0, relative=True)
    if unit == "":
        raise ValueError(f'{rule}; got {value!r}, which has no unit (write "{value.strip()}%" for a percentage)')
    units: Mapping[str, float] = (
        _TIME_UNITS if metric == "latency" else _BYTE_UNITS if metric == "bytes" else _COUNT_UNITS
    )
    if unit not in units:
        raise ValueError(
            f"{rule}; got {value!r} with unknown unit {m.group(2)!r} (known: {', '.join(k for k in units if k)})"
        )
    return Limit(number * units[unit])


class Budget:
    """Limits on ``macs``, ``params``, ``bytes`` and ``latency`` (ms, predicted); ``None`` means unlimited.

    ``slack(cost, base)`` returns, per limited metric, ``(value - limit) / limit``:
    ``<= 0`` when the limit is met (Optuna's constraint convention). ``base`` is
    needed only for percentage limits.
    """

    def __init__(self, macs: Any = None, params: Any = None, bytes: Any = None, latency: Any = None) -> None:  # noqa: A002
        self.limits: dict[str, Limit] = {}
        for metric, value in (("macs", macs), ("params", params), ("bytes", bytes), ("latency", latency)):
            if value is not None:
                self.limits[metric] = _parse(metric, value)
        if not self.limits:
            raise ValueError("a budget needs at least one limit: macs, params, bytes or latency")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        unknown = sorted(set(data) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown budget key(s) {unknown}; known keys are {list(METRICS)}")
        return cls(**data)

    def absolute(self, base: Cost | None = None) -> dict[str, float]:
        out = {}
        for metric, limit in self.limits.items():
            if metric == "latency" and base is not None and base.latency is None:
                raise PlanError(_no_profile(limit))
            if limit.relative:
                if base is None:
                    raise ValueError(f"budget {metric}={limit} is relative: pass the base model's cost")
                out[metric] = limit.resolve(_value(base, metric))
            else:
                out[metric] = limit.value
        return out

    def slack(self, cost: Cost, base: Cost | None = None) -> dict[str, float]:
        return {m: (_value(cost, m) - lim) / lim for m, lim in self.absolute(base).items()}

    def is_met(self, cost: Cost, base: Cost | None = None) -> bool:
        return all(v <= 0 for v in self.slack(cost, base).values())

    def to_dict(self) -> dict[str, str | float]:
        return {m: (str(lim) if lim.relative else lim.value) for m, lim in self.limits.items()}

    def scaled(self, factor: float) -> Budget:
        """Every limit times ``factor`` (0 < factor <= 1): a cost level below this budget's cap."""
        if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
            raise ValueError(f"a budget scale must be in (0, 1], got {factor!r}")
        out = Budget.__new__(Budget)
        out.limits = {m: Limit(lim.value * factor, lim.relative) for m, lim in self.limits.items()}
        return out

    def tightest(self, base: Cost) -> float:
        """The smallest fraction of the base model's cost that a limit allows (0.3: the tightest limit is 30 %)."""
        return min(limit / _value(base, m) for m, limit in self.absolute(base).items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and self.limits == other.limits

    def __repr__(self) -> str:
        return "Budget(" + ", ".join(f"{m}={lim}" for m, lim in self.limits.items()) + ")"


def _no_profile(limit: Limit) -> str:
    """The one-line error of a latency limit on a space without a device profile."""
    shown = str(limit) if limit.relative else f"{limit.value:g}ms"
    return (
        f"budget latency={shown} needs a device profile: a latency budget is met by predicted latency and this "
        "space has no profile; run `prunetune profile` (in Python: space.attach_profile(profile_space(space))) "
        "or limit macs, params or bytes instead"
    )


def _value(cost: Cost, metric: str) -> float:
    """``cost``'s figure for ``metric``; a latency limit without a predicted latency is a one-line error."""
    v = getattr(cost, metric)
    if v is None:
        raise ValueError(
            f"budget {metric} needs a predicted latency: attach a device profile (`prunetune profile`; with the "
            "methods of the plan's ranks) and use plans without bits"
        )
    return float(v)
