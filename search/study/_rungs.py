"""Multi-fidelity: asynchronous successive halving over rungs, promoting as multi-objective ASHA does.

A study with ``evaluate.rungs = [50, 200, 800]`` fine-tunes every candidate for
50 steps (rung 0) and scores it on ``evaluate.max_val_samples`` validation
images. When a candidate finishes rung ``k`` (not the last), it is compared
with every candidate of the study that has finished rung ``k`` (itself
included): their points (rung-``k`` accuracy, and the analytic costs: MACs,
params, bytes — a measured latency is not ranked) are ordered by
non-dominated rank, then by crowding distance within a rank (NSGA-II's order,
the promotion rule of MOASHA: Schmucker et al., 2021, and Syne Tune); the
candidate goes on to rung ``k + 1`` when it is among the first
``max(1, n // reduction_factor)`` of the ``n``. It then continues the same model
(its weights after rung ``k``) through the whole evaluator again — BN
recalibration, a fresh cosine schedule for the rung's extra steps, accuracy —
so the rungs restart the learning rate (SGDR-like) and each rung's accuracy is
measured at a low learning rate. Candidates are compared only after the same
number of steps (``CandidateRow.accuracy_after``). The top rung scores on the
whole validation split.

No winner is declared inside the noise (``evaluate.promote_ties``, on by
default): a candidate that misses the cut but ranks within the next
``max(1, n // reduction_factor)`` goes on as well when a promoted candidate
that scores better beats it by less than the noise — under two paired
standard errors on the same images (the rung's validation images, or the
teacher's pool for ``evaluate.score = "kl"``; :func:`storage.ties`' rule,
:func:`rivals` names whom to compare it with). Each decision looks no further
than the next share, so the longer fine-tune decides between tied plans
instead of a difference the score cannot see. A rival's per-rung scores are
read from the file beside its weights, written when it finishes its climb: a
rival another worker is still training is not compared (with one worker, as
the local driver runs, every rival has finished).

This is asynchronous (ASHA): the decision is taken at once, against whoever
has finished the rung so far, so early candidates are promoted more easily;
no candidate waits. It replaces the earlier "stop when a cheaper candidate
was clearly ahead at the same step" rule: a candidate now stops only at a rung
boundary, as COMPLETE with the accuracy of the last rung it finished.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from storage import dominates

__all__ = ["crowding_distance", "nondominated_ranks", "promotes", "promotion_order", "rivals"]


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Each point's non-dominated rank (0: the Pareto front; all objectives minimised)."""
    n = len(points)
    ranks = [-1] * n
    left = set(range(n))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding_distance(points: Sequence[Sequence[float]], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of ``members`` (indices of one rank): boundary points get infinity."""
    dist = dict.fromkeys(members, 0.0)
    if len(members) <= 2:
        return dict.fromkeys(members, math.inf)
    for m in range(len(points[members[0]])):
        order = sorted(members, key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for prev, cur, nxt in zip(order, order[1:], order[2:], strict=False):
            dist[cur] += (points[nxt][m] - points[prev][m]) / (hi - lo)
    return dist


def promotion_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``points`` best first: by non-dominated rank, then by crowding distance (larger first)."""
    ranks = nondominated_ranks(points)
    crowd: dict[int, float] = {}
    for r in set(ranks):
        crowd.update(crowding_distance(points, [i for i, x in enumerate(ranks) if x == r]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def promotes(points: Sequence[Sequence[float]], index: int, reduction_factor: int) -> bool:
    """Whether point ``index`` is among the first ``max(1, n // reduction_factor)`` of :func:`promotion_order`."""
    keep = max(1, len(points) // reduction_factor)
    return index in promotion_order(points)[:keep]


def rivals(points: Sequence[Sequence[float]], index: int, reduction_factor: int) -> list[int]:
    """The promoted points that point ``index`` may be tied with, when it just missed the cut.

    Empty unless ``index`` ranks within the next ``max(1, n // reduction_factor)`` after the promoted ones;
    then the promoted points whose score (``points[i][0]``, minimised) is at least as good as its own: if any
    of them beats it only inside the noise, it goes on too (the caller judges the noise).
    """
    keep = max(1, len(points) // reduction_factor)
    order = promotion_order(points)
    if index not in order[keep : 2 * keep]:
        return []
    return [i for i in order[:keep] if points[i][0] <= points[index][0]]
