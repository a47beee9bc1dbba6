"""After a run: every front member's latency measured end to end, beside the device profile's prediction.

A study with a device profile (:mod:`search.drivers._profile`) ranks and
limits candidates by *predicted* latency. Once the study holds its
candidates and none runs (after the re-scoring rung), each member of the
Pareto front whose latency was predicted and not yet measured is rebuilt from
its plan and timed end to end on the study's device: the median, 10th and
90th percentile of :data:`RUNS` calls after :data:`WARMUP` untimed ones
(:func:`spaces.measure_latency`). The measurement is stored beside the
prediction (``StudyStore.record_measured_latency``: once per candidate), so
``prunetune front`` and the report show predicted against measured and the
prediction error (:func:`storage.latency_check`), and say so when the median error
exceeds 15 %. Idempotent: a rerun measures only members not measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces import check_interrupt

if TYPE_CHECKING:
    from search.drivers._prepare import Prepared

__all__ = ["RUNS", "WARMUP", "remeasure_front"]

RUNS = 25
WARMUP = 5


def remeasure_front(p: Prepared) -> list[str]:
    """Measure the front members that have a prediction and no measurement; one line per member measured."""
    from search.drivers._profile import latency_device
    from search.drivers._rescore import settled
    from spaces import Plan, measure_latency

    if p.space.profile is None:
        return []
    if not settled(p, p.store.candidates(p.study_id)):
        return []  # another worker is still evaluating: the last one to finish measures
    events = []
    for row in p.store.front(p.study_id):
        d = row.device_latency or {}
        if d.get("predicted_ms") is None or d.get("measured_ms") is not None:
            continue
        check_interrupt()  # a safe point: between two members
        model = p.space.apply(Plan.from_json(row.plan))
        runtime = p.space.profile.runtime
        device = latency_device(runtime, p.device)
        measured = measure_latency(
            model, p.data.example_inputs(1), device=device, runs=RUNS, warmup=WARMUP, runtime=runtime
        )
        if p.store.record_measured_latency(row.id, measured):
            events.append(
                f"candidate {row.id}: latency predicted {d['predicted_ms']:.3f} ms, measured "
                f"{measured['measured_ms']:.3f} ms (p10-p90 {measured['p10_ms']:.3f}-{measured['p90_ms']:.3f})"
            )
    return events
