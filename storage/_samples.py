"""Per-image scores beside a candidate's weights, and the ties they reveal: no winner declared inside the noise.

Two candidates scored on the same validation images differ by less than
their accuracies' own errors suggest: most images are right (or wrong) for
both. A candidate's last evaluation keeps, per image, whether its top-1 class
was right and its cross-entropy, in a file beside its weights
(:func:`scores_path`: ``<weights>.scores.safetensors``). The difference of two
candidates is then the mean of their per-image differences and its standard
error the differences' spread over ``sqrt(n)`` (:func:`paired_difference`).

:func:`ties` lists the candidates within the noise of the best-scored
candidate ("best within the cap", at its rung): a difference of less than two
paired standard errors. :func:`pick_within_cap` declares no winner inside that
noise: of the best-scored and the candidates tied with it, the cheapest plan
is the study's pick (MACs, then weight bytes, then parameters), and the
terminal's front and the report say so. Comparisons need the
same images: candidates at another rung (another validation subset), or
without a scores file (a study stored before these files, a Ray node's
artifacts elsewhere), are left out. This module is torch-free (numpy, imported when used).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from storage._schema import CandidateRow

__all__ = [
    "Paired",
    "Pick",
    "load_sample_scores",
    "paired_difference",
    "pick_within_cap",
    "save_sample_scores",
    "scores_path",
    "ties",
]

TIE_Z = 2.0  # a difference within this many paired standard errors is a tie (about 95 %)
PICK_LEGEND = (  # the report's legend of its ``pick`` column (Markdown; the HTML panel drops the backticks)
    "`pick`: `*` the study's pick: the best-scored within the cap, or the cheapest plan within its noise; `≈` within"
    " the best-scored one's noise (under 2 paired standard errors on the same validation images, or the teacher's"
    " pool for score = kl): no winner is"
    " declared inside the noise."
)


def scores_path(artifact: str | Path) -> Path:
    """Where the per-image scores of the weights file ``artifact`` are kept."""
    p = Path(artifact)
    return p.with_name(p.name.removesuffix(".safetensors") + ".scores.safetensors")


def save_sample_scores(
    artifact: str | Path,
    correct: np.ndarray | None,
    loss: np.ndarray,
    rungs: Mapping[int, tuple[np.ndarray, ...]] | None = None,
    kl: np.ndarray | None = None,
) -> Path:
    """Write ``correct`` (bool per image) and ``loss`` (cross-entropy per image) beside ``artifact``.

    ``rungs`` adds each rung's own per-image scores, keyed by its fine-tune steps (``correct@50``,
    ``loss@50``): a promotion compares candidates at a lower rung, on that rung's validation subset. A
    language model keeps only ``loss`` (``correct=None``): each validation window's mean log-likelihood. ``kl``
    (and a third array per rung): each teacher-pool image's divergence from the dense model (``score = "kl"``).
    """
    import numpy as np
    from safetensors.numpy import save_file

    arrays: dict[str, np.ndarray] = {"loss": np.asarray(loss, np.float32)}
    if correct is not None:
        arrays["correct"] = np.asarray(correct, np.uint8)
    if kl is not None:
        arrays["kl"] = np.asarray(kl, np.float32)
    for steps, per_image in (rungs or {}).items():
        arrays[f"correct@{steps}"] = np.asarray(per_image[0], dtype=np.uint8)
        arrays[f"loss@{steps}"] = np.asarray(per_image[1], dtype=np.float32)
        if len(per_image) > 2 and per_image[2] is not None:
            arrays[f"kl@{steps}"] = np.asarray(per_image[2], dtype=np.float32)
    path = scores_path(artifact)
    part = path.with_name(path.name + ".part")  # written whole, then moved: a killed writer leaves no torn file
    save_file(arrays, part)
    os.replace(part, path)
    return path


def load_sample_scores(artifact: str | Path, steps: int | None = None) -> dict[str, np.ndarray] | None:
    """``{"correct": ..., "loss": ...}`` kept beside ``artifact`` (``loss`` alone for a language model; with ``kl``
    where the study scores by the teacher's pool): its last
    evaluation's, or (``steps``) those of the rung that ended after ``steps`` fine-tune steps. ``None`` when there
    is no such file or rung, or the file cannot be read (then nothing is judged tied with it: a damaged file never
    breaks a table or a report)."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = scores_path(artifact)
    if not path.is_file():
        return None
    suffix = "" if steps is None else f"@{steps}"
    try:
        data = load_file(str(path))
        keys = [k for k in ("correct", "loss", "kl") if k + suffix in data]
        return {k: data[k + suffix].astype(np.float64) for k in keys} if "loss" in keys else None
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Paired:
    """``a − b`` over the same images (the score's direction: positive means ``a`` is better) and its error."""

    diff: float
    se: float

    @property
    def tied(self) -> bool:
        return abs(self.diff) <= TIE_Z * self.se


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], score: str = "accuracy") -> Paired | None:
    """How much better ``a`` scores than ``b`` on the same images (accuracy; the loss or the teacher-pool KL
    divergence, ``score="kl"``: lower is better).

    ``None`` when the two were not scored on the same number of images, or one of them lacks the score.
    """
    key, sign = {"accuracy": ("correct", 1.0), "kl": ("kl", -1.0)}.get(score, ("loss", -1.0))
    if key not in a or key not in b or a[key].shape != b[key].shape or len(a[key]) < 2:
        return None
    d = sign * (a[key] - b[key])
    return Paired(float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))))


def ties(rows: Sequence[CandidateRow], best: CandidateRow, score: str = "accuracy") -> dict[int, Paired]:
    """The candidates at ``best``'s rung whose score is within the noise of ``best``'s: id -> the paired
    difference ``best − candidate`` (empty when ``best`` has no scores file)."""
    mine = load_sample_scores(best.artifact) if best.artifact else None
    if mine is None:
        return {}
    out: dict[int, Paired] = {}
    for r in rows:
        if r.id == best.id or r.top_rung != best.top_rung or not r.artifact or r.over_cap:
            continue
        theirs = load_sample_scores(r.artifact)
        paired = paired_difference(mine, theirs, score) if theirs is not None else None
        if paired is not None and paired.tied:
            out[r.id] = paired
    return out


@dataclass(frozen=True)
class Pick:
    """The study's pick and why: ``best`` scored best within the cap; ``row`` is the cheapest plan within its
    noise (``best`` itself when nothing cheaper is tied with it); ``tied``: :func:`ties` of ``best``."""

    row: CandidateRow
    best: CandidateRow
    tied: dict[int, Paired]

    @property
    def cheaper(self) -> bool:
        """Whether a cheaper plan tied with the best-scored one was picked in its place."""
        return self.row.id != self.best.id


def _cheapness(r: CandidateRow) -> tuple[float, float, float]:
    """A sort key, cheapest first: MACs, then weight bytes, then parameters (a missing cost is never cheaper)."""
    macs, size, params = (math.inf if v is None else float(v) for v in (r.macs, r.bytes, r.params))
    return macs, size, params


def pick_within_cap(rows: Sequence[CandidateRow], score: str = "accuracy") -> Pick | None:
    """The study's pick among ``rows`` (the front, as every view passes it): no winner declared inside the noise.

    The best-scored candidate within the cap (:func:`storage.best_within_cap`)
    is compared with every candidate at its rung on the same validation
    images (:func:`ties`); of it and those tied with it, the cheapest plan is
    picked (:func:`_cheapness`; on equal costs the best-scored stays), leaving
    out any that another candidate at that rung beats on the score and every
    cost (ties are not transitive: a plan can tie with the best-scored while a
    cheaper, better one does not). Without per-image scores (an older study, a
    Ray node's files elsewhere) nothing is tied and the best-scored is the
    pick. ``None`` when no candidate has an accuracy.
    """
    from storage._pareto import best_within_cap, dominates

    best = best_within_cap(rows, score)
    if best is None:
        return None
    tied = ties(rows, best, score)
    level = [r for r in rows if r.top_rung == best.top_rung and r.accuracy is not None and not r.over_cap]

    def point(r: CandidateRow) -> list[float | None]:
        s = r.score_after(r.top_steps, score) if score != "accuracy" else r.accuracy
        return [None if s is None else -s, *_cheapness(r)]

    pool = [
        r for r in (best, *(r for r in rows if r.id in tied)) if not any(dominates(point(o), point(r)) for o in level)
    ]
    return Pick(row=min(pool or [best], key=_cheapness), best=best, tied=tied)
