"""After a run: every front member's latency measured end to end, judged against the latency cap, and fed back.

A study with a device profile (:mod:`search.preparation._profile`) ranks and
limits candidates by *predicted* latency. Once the study holds its
candidates and none runs (after the re-scoring rung), each member of the
Pareto front whose latency was predicted and not yet measured is rebuilt from
its plan and timed end to end on the profile's runtime and device
(:func:`search.preparation._profile.latency_device`): the median, 10th and 90th
percentile of :data:`RUNS` calls after :data:`WARMUP` untimed ones
(:func:`spaces.measure_latency`). The measurement is stored beside the
prediction (``StudyStore.record_measured_latency``: once per candidate), so
``prunetune front`` and the report show predicted against measured and the
prediction error (:func:`storage.latency_check`), and say so when the median
error exceeds 15 %.

**The cap on the device.** Under a latency budget, each measurement is judged
in the same transaction that stores it (:func:`storage.exceeds_cap`): a member
whose measured median exceeds the cap by more than its noise (the median's
uncertainty from its own runs, ``(p90 - p10) / sqrt(runs)``: about two
standard errors) is marked ``over_cap``. An absolute cap is used as written; a cap in % of the base model
resolves against the base model's latency measured end to end on the same
runtime and device when the profile was made (``DeviceProfile.base_ms``), so a
measured member is compared with a measured base (the cap used is stored with
the verdict, ``cap_ms``). An over-cap member leaves the front (the front is
rewritten in that transaction), is never "the best within the cap", and is
listed apart in ``prunetune front`` and the report. The candidates it kept off
the front may then join it: they are measured in turn, round after round,
until every front member is measured (at most :data:`MAX_MEASURED` per call; a
rerun measures the rest).

**Feedback.** The study's measured members (over the cap or not) go back into
the profile's calibration: ``spaces.recalibrate`` refits the in-context factor
and the rest (``s * tables + a + b * x``) on the profile's own calibration
points plus these, always starting from the cached profile (so each refit uses
every measurement once, however many runs the study had). The refit is stored
per study (``StudyStore.save_study_profile``, under the cached profile's key),
never in place of the cached profile, which other studies of the model on this
device start from; a resumed study reads its own refit when it is prepared.

Idempotent: a rerun measures only members not measured, and refits only when it
measured something (or the study has measurements but no refit yet).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from spaces import check_interrupt

if TYPE_CHECKING:
    from search.preparation._prepare import Prepared
    from spaces import DeviceProfile, Plan
    from storage import CandidateRow

__all__ = ["MAX_MEASURED", "RUNS", "WARMUP", "device_cap", "refit_profile", "remeasure_front"]

RUNS = 25
WARMUP = 5
MAX_MEASURED = 64  # front members measured per call at most: the loop's bound (each over-cap one lets others in)


def remeasure_front(p: Prepared, *, on_time: bool = False) -> list[str]:
    """Measure (and judge) the front members until every one is measured, then refit; one line per event
    (``on_time``: as :func:`search.study._rescore.rescore`'s)."""
    from search.study._rescore import settled

    if p.space.profile is None:
        return []
    if not settled(p, p.store.candidates(p.study_id), on_time=on_time):
        return []  # another worker is still evaluating: the last one to finish measures
    cap = device_cap(p)
    events: list[str] = []
    measured = 0
    while todo := [r for r in p.store.front(p.study_id) if _unsettled(r, cap)]:
        if measured >= MAX_MEASURED:
            events.append(
                f"latency: {len(todo)} front members not measured yet ({MAX_MEASURED} measured in this run): "
                "run the study again to measure them"
            )
            break
        for row in todo[: MAX_MEASURED - measured]:
            check_interrupt()  # a safe point: between two members
            events += _measure_one(p, row, cap)
            measured += 1
    if measured or p.store.study_profile(p.study, p.space.profile.key) is None:
        events += refit_profile(p)
    return events


def device_cap(p: Prepared) -> float | None:
    """The study's latency cap in ms on the device: absolute as written, or a share of the base model's measured
    latency (``DeviceProfile.base_ms``); ``None``: the budget does not limit latency."""
    limit = p.budget.limits.get("latency")
    if limit is None or p.space.profile is None:
        return None
    return limit.resolve(p.space.profile.base_ms)


def _unsettled(row: CandidateRow, cap: float | None) -> bool:
    """Whether a front member with a prediction still needs a measurement, or (under a cap) a verdict."""
    d = row.device_latency or {}
    if d.get("predicted_ms") is None:
        return False
    return d.get("measured_ms") is None or (cap is not None and "over_cap" not in d)


def _measure_one(p: Prepared, row: CandidateRow, cap: float | None) -> list[str]:
    """Time one front member (unless it was measured before), store it with its verdict; its event lines."""
    from search.preparation._profile import latency_device
    from spaces import Plan, measure_latency

    assert p.space.profile is not None  # remeasure_front returned early otherwise
    d = row.device_latency or {}
    measured: dict[str, float] = {}
    if d.get("measured_ms") is None:
        model = p.space.apply(Plan.from_json(row.plan))
        runtime = p.space.profile.runtime
        device = latency_device(runtime, p.device)
        measured = measure_latency(
            model, p.data.example_inputs(1), device=device, runs=RUNS, warmup=WARMUP, runtime=runtime
        )
    if not p.store.record_measured_latency(row.id, measured, cap_ms=cap, objectives=p.objectives):
        return []  # another worker measured and judged it first
    after = p.store.candidate(p.study_id, id=row.id).device_latency or {}
    events = []
    if measured:
        events.append(
            f"candidate {row.id}: latency predicted {after['predicted_ms']:.3f} ms, measured "
            f"{after['measured_ms']:.3f} ms (p10-p90 {after['p10_ms']:.3f}-{after['p90_ms']:.3f})"
        )
    if after.get("over_cap"):
        events.append(
            f"candidate {row.id} (trial {row.trial_number}): measured {after['measured_ms']:.3f} ms, over the latency "
            f"cap {after['cap_ms']:.3f} ms by more than its noise ({after['noise_ms']:.3f} ms): not within the "
            "budget, taken off the front"
        )
    return events


def refit_profile(p: Prepared) -> list[str]:
    """Refit the cached profile's calibration on the study's measured members and store it for the study (see the
    module docs); one line saying how the prediction error over them changed, or none when nothing is measured."""
    from spaces import DeviceProfile, Plan, recalibrate

    assert p.space.profile is not None
    key = p.space.profile.key
    cached = p.store.profile(key)
    base = DeviceProfile.from_json(cached) if cached is not None else p.space.profile
    rows = [r for r in p.store.candidates(p.study_id) if (r.device_latency or {}).get("measured_ms")]
    if not rows:
        return []
    points = [(Plan.from_json(r.plan), float((r.device_latency or {})["measured_ms"])) for r in rows]
    refit = recalibrate(p.space, base, points)
    p.store.save_study_profile(
        p.study_id, key, refit.to_json(), [[r.id, ms] for r, (_, ms) in zip(rows, points, strict=True)]
    )
    before = statistics.median(_error(base, p, plan, ms) for plan, ms in points)
    after = statistics.median(_error(refit, p, plan, ms) for plan, ms in points)
    return [
        f"latency model refitted on {len(points)} measured front members: median error over them "
        f"{100 * before:.1f} % -> {100 * after:.1f} % (stored for this study; a resumed run predicts with it)"
    ]


def _error(prof: DeviceProfile, p: Prepared, plan: Plan, ms: float) -> float:
    """``|predicted - measured| / measured`` of one measured plan under profile ``prof``."""
    return abs(prof.predict(p.space, plan) - ms) / ms
