"""Studies bounded by time (``search.time``): no candidate starts that cannot end before the limit.

Many teams budget hours, not trials. With ``search.time = "30m"`` (or
``--search.time 30m``) the clock starts when the run starts (its preparation
counts), and before each new candidate the driver asks :meth:`Deadline.admits`
whether the candidate and the closing work still fit:

* a candidate is expected to take as long as the longest one the study has
  recorded so far (``seconds`` in the store, every run of the study; a
  candidate promoted to the top rung is the slow kind, so this is the
  cautious estimate); before any was recorded, the first one starts if any
  time is left;
* the closing work is the re-scoring rung (:mod:`search.study._rescore`):
  ``evaluate.rescore_top`` candidates, each continued from the top rung's steps
  to ``rescore_steps``, estimated in proportion to the longest candidate.

When they no longer fit, the run stops proposing, the re-scoring rung runs on
what the study holds (:func:`search.study._rescore.settled` accepts a study
that ended on time), and the run ends cleanly with ``RunResult.stopped``
saying so; the store keeps the same line for the report and the service
(:meth:`storage.StudyStore.set_stopped`), until a later run of the study
completes it. A rerun goes on where it stopped, within the same limit again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spaces import Status

if TYPE_CHECKING:
    from search.preparation._prepare import Prepared

__all__ = ["Deadline"]


@dataclass
class Deadline:
    """The wall-clock limit of one run (``limit_s`` seconds from ``started``, a ``time.monotonic()`` instant)."""

    limit_s: float
    started: float
    text: str  # the limit as the user wrote it ("30m")

    @classmethod
    def of(cls, limit: str | None, limit_s: float | None, started: float) -> Deadline | None:
        """The run's deadline, or ``None`` without ``search.time``."""
        return None if limit is None or limit_s is None else cls(limit_s, started, limit)

    def left(self) -> float:
        """Seconds left before the limit (negative once it has passed)."""
        return self.limit_s - (time.monotonic() - self.started)

    def admits(self, p: Prepared) -> str | None:
        """``None`` if another candidate can start; otherwise the line that says why the run stops on time."""
        candidate = _longest_candidate(p)
        closing = _rescoring_estimate(p, candidate or 0.0)
        left = self.left()
        if left > (candidate or 0.0) + closing:
            return None
        count = p.store.count(p.study_id)
        estimate = f"about {candidate:.0f} s per candidate" if candidate else "no candidate measured yet"
        return (
            f"stopped on time: the {self.text} limit leaves {max(left, 0.0):.0f} s, too little for another "
            f"candidate ({estimate}) and the re-scoring ({closing:.0f} s); "
            f"{count} of {p.config.search.candidates} candidates evaluated"
        )


def _longest_candidate(p: Prepared) -> float | None:
    """The longest evaluation the study has recorded (seconds), or ``None`` before the first."""
    done = (Status.COMPLETE, Status.PRUNED, Status.FAIL)
    seconds = [r.seconds for r in p.store.candidates(p.study_id) if r.status in done and r.seconds]
    return max(seconds) if seconds else None


def _rescoring_estimate(p: Prepared, candidate_s: float) -> float:
    """Seconds the re-scoring rung is expected to take: its extra steps, at the longest candidate's pace."""
    from search.study._rescore import rescore_steps

    e = p.config.evaluate
    if e.rescore_top <= 0 or not candidate_s:
        return 0.0
    top = p.rungs[-1]
    extra = max(rescore_steps(p) - top, 0)
    return e.rescore_top * candidate_s * extra / max(top, 1)
