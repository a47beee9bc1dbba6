"""When a candidate's fine-tune stops early.

Optuna's pruners do not support multi-objective studies, so the rule is ours:

    A running candidate is stopped at step ``s`` when some COMPLETE candidate
    that costs no more on every cost objective (MACs, params, ...) had, at the
    same step ``s`` of its own fine-tune, an intermediate accuracy at least
    ``margin`` higher.

Such a candidate is very unlikely to reach the front: a cheaper-or-equal plan
was clearly ahead at the same point of the same fine-tune recipe. The margin
(default 0.02) absorbs the noise of small validation sets; comparing at equal
steps (not against final accuracies) keeps the rule fair to candidates that
start low and recover. Stopped candidates are stored as PRUNED with their
intermediate accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["EarlyStop"]


@dataclass(frozen=True)
class _Done:
    costs: tuple[float, ...]
    history: Mapping[int, float]


class EarlyStop:
    def __init__(self, costs: Sequence[float], margin: float) -> None:
        self.costs = tuple(costs)
        self.margin = margin
        self._done: list[_Done] = []
        self.reason: str | None = None

    def add(self, costs: Sequence[float | None], history: Sequence[Sequence[float]] | None) -> None:
        """A COMPLETE candidate's costs and ``[(step, accuracy), ...]``."""
        if history and all(c is not None for c in costs):
            self._done.append(_Done(tuple(float(c) for c in costs), {int(s): float(a) for s, a in history}))  # type: ignore[arg-type]

    def __call__(self, step: int, accuracy: float) -> bool:
        """``False`` stops the candidate (the evaluator's callback convention)."""
        for d in self._done:
            ahead = d.history.get(step)
            if ahead is None or ahead < accuracy + self.margin:
                continue
            if all(a <= b for a, b in zip(d.costs, self.costs, strict=True)):
                self.reason = (
                    f"stopped at step {step}: accuracy {accuracy:.4f}, while a candidate costing no more "
                    f"had {ahead:.4f} at that step"
                )
                return False
        return True
