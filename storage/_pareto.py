"""Non-dominated filtering (all objectives minimised)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pareto_front"]


def pareto_front(points: Sequence[Sequence[float | None]]) -> list[int]:
    """Indices of the points no other point dominates; points with a missing value are left out.

    ``a`` dominates ``b`` when it is no worse in every objective and better in one.
    Equal points are all kept. O(n^2), fine for the thousands of candidates a study holds.
    """
    valid = [i for i, p in enumerate(points) if all(v is not None for v in p)]
    keep = []
    for i in valid:
        pi = points[i]
        dominated = False
        for j in valid:
            if i == j:
                continue
            pj = points[j]
            if all(a <= b for a, b in zip(pj, pi, strict=True)) and any(  # type: ignore[operator]
                a < b  # type: ignore[operator]
                for a, b in zip(pj, pi, strict=True)
            ):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep
