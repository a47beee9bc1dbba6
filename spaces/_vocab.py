"""PruneTune's vocabulary: each set of names defined once, torch-free.

Every package imports these (downward: ``spaces`` is the lowest package), the
pydantic config takes its allowed values from them, and because they are
``StrEnum`` members they compare equal to, and are stored as, their plain
string values (``Status.COMPLETE == "COMPLETE"``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["COST_METRICS", "CandidateKind", "CostMetric", "Direction", "Importance", "Method", "Objective", "Status"]


class Status(StrEnum):
    """A candidate's state (Optuna's trial states, less WAITING)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAIL = "FAIL"
    PRUNED = "PRUNED"

    @property
    def finished(self) -> bool:
        return self is not Status.RUNNING


class CandidateKind(StrEnum):
    """Where a candidate's plan came from."""

    ALLOCATOR = "allocator"  # the allocator's plan at the budget's cap (a seed)
    ALLOCATOR_FLOOR = "allocator-floor"  # the allocator's plan at a seed level below the cap (a seed)
    UNIFORM = "uniform"  # the uniform plan repaired onto a seed level (a seed)
    GLOBAL = "global"  # channels ranked across groups, removed until a seed level holds (a seed)
    SAMPLED = "sampled"  # proposed by the sampler
    RETRY = "retry"  # a stopped worker's candidate, evaluated again

    @property
    def is_seed(self) -> bool:
        return self in (
            CandidateKind.ALLOCATOR,
            CandidateKind.ALLOCATOR_FLOOR,
            CandidateKind.UNIFORM,
            CandidateKind.GLOBAL,
        )


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class Objective(StrEnum):
    """What a study optimises (see :attr:`direction`): accuracy first, then costs, for a vision study; perplexity
    and memory (weights plus KV cache, :class:`spaces.decoder.DecoderCost`) for a language-model study."""

    ACCURACY = "accuracy"
    MACS = "macs"
    PARAMS = "params"
    BYTES = "bytes"
    LATENCY = "latency"
    PERPLEXITY = "perplexity"
    MEMORY = "memory"

    @property
    def direction(self) -> Direction:
        return Direction.MAXIMIZE if self is Objective.ACCURACY else Direction.MINIMIZE

    @property
    def is_cost(self) -> bool:
        """A cost the analytic model computes (not accuracy, not measured latency)."""
        return self.value in COST_METRICS


class CostMetric(StrEnum):
    """What a :class:`~spaces.Budget` limits and a :class:`~spaces.Cost` holds, in this order."""

    MACS = "macs"
    PARAMS = "params"
    BYTES = "bytes"


COST_METRICS = tuple(m.value for m in CostMetric)


class Method(StrEnum):
    """Low-rank factorization methods (see :mod:`spaces._lowrank`) and versatile filters (a layer's filters cut
    from fewer primary filters: :mod:`spaces.factorization._versatile`)."""

    SVD = "svd"
    TUCKER2 = "tucker2"
    TT = "tt"
    VERSATILE = "versatile"
    VERSATILE_CH = "versatile_ch"


class Importance(StrEnum):
    """Channel importance criteria (see :mod:`spaces.policy._importance`)."""

    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    GROUP_L1 = "group_l1"
    GROUP_L2 = "group_l2"
    LAMP = "lamp"
    TAYLOR = "taylor"
    HESSIAN = "hessian"

    @property
    def needs_data(self) -> bool:
        """Whether the criterion reads gradients on calibration batches (``ModelSpace.calibrate_importance``)."""
        return self in (Importance.TAYLOR, Importance.HESSIAN)
