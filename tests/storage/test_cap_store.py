"""The latency cap on the device, in the store: a measured verdict per front member, the front without the members
over the cap, "best within the cap" never one of them, and a study's refitted profile (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from storage import StudyStore, best_within_cap, exceeds_cap
from tests.storage.test_store import _study, url  # noqa: F401  (the SQLite + PostgreSQL fixture)


def _timed(median: float, p10: float, p90: float, runs: int = 25) -> dict[str, float]:
    return {"measured_ms": median, "p10_ms": p10, "p90_ms": p90, "runs": float(runs)}


@pytest.mark.parametrize(
    ("timed", "cap", "over", "noise"),
    [
        (_timed(6.0, 5.75, 6.25), 5.0, True, 0.1),  # 1 ms over, the median known within 0.1 ms: over
        (_timed(5.05, 4.75, 5.25), 5.0, False, 0.1),  # 0.05 ms over: within the noise
        (_timed(5.25, 4.5, 5.75), 5.0, False, 0.25),  # exactly cap + noise: not over
        (_timed(5.3, 5.3, 5.3), 5.0, True, 0.0),  # no spread: any excess is over
        (_timed(4.0, 3.0, 9.0), 5.0, False, 1.2),  # under the cap, however noisy
        (_timed(5.5, 4.0, 7.0, runs=4), 5.0, False, 1.5),  # few runs: the median is known less well
        (_timed(5.5, 4.0, 7.0, runs=100), 5.0, True, 0.3),  # the same spread over many runs: over
    ],
)
def test_exceeds_cap_is_the_median_beyond_the_cap_by_more_than_its_uncertainty(
    timed: dict[str, float], cap: float, over: bool, noise: float
) -> None:
    assert exceeds_cap(timed, cap) == (over, pytest.approx(noise))


def test_a_member_measured_over_the_cap_leaves_the_front_and_is_never_best(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    sid = _study(store, budget={"latency": "5ms"})
    ids = {}
    for name, acc, macs, predicted in (("a", 0.95, 800, 4.9), ("b", 0.90, 600, 3.0), ("c", 0.93, 900, 4.0)):
        cid = store.reserve(sid, f'{{"{name}": 1}}', f"h-{name}")
        assert cid is not None
        store.finish(cid, "COMPLETE", accuracy=acc, cost={"macs": macs, "params": 1, "bytes": 4, "latency": predicted})
        ids[name] = cid
    assert {r.id for r in store.front(sid)} == {ids["a"], ids["b"]}  # a dominates c
    assert best_within_cap(store.front(sid)).id == ids["a"]  # type: ignore[union-attr]

    assert store.record_measured_latency(ids["a"], _timed(6.0, 5.75, 6.25), cap_ms=5.0)
    a = store.candidate(sid, id=ids["a"])
    assert a.over_cap and a.device_latency == {
        "predicted_ms": 4.9, "measured_ms": 6.0, "p10_ms": 5.75, "p90_ms": 6.25, "runs": 25.0,
        "cap_ms": 5.0, "noise_ms": pytest.approx(0.1), "over_cap": True,
    }  # fmt: skip
    assert {r.id for r in store.front(sid)} == {ids["b"], ids["c"]}  # a left; c, which only a dominated, joined
    assert [r.id for r in store.over_cap(sid)] == [ids["a"]]
    everyone = store.candidates(sid, "COMPLETE")
    assert best_within_cap(everyone).id == ids["c"]  # type: ignore[union-attr]  # a is the most accurate
    with create_engine(store.sqlalchemy_url).connect() as con:  # outside readers see the same front
        sql = "SELECT candidate_id FROM prunetune_pareto WHERE study_id = :s ORDER BY candidate_id"
        assert [r[0] for r in con.execute(text(sql), {"s": sid})] == sorted([ids["b"], ids["c"]])

    assert not store.record_measured_latency(ids["a"], _timed(1.0, 1.0, 1.0), cap_ms=5.0)  # once per candidate
    assert store.candidate(sid, id=ids["a"]).device_latency["measured_ms"] == 6.0  # type: ignore[index]
    assert store.record_measured_latency(ids["b"], _timed(5.05, 4.75, 5.25), cap_ms=5.0)  # within its noise
    assert not store.candidate(sid, id=ids["b"]).over_cap
    assert {r.id for r in store.front(sid)} == {ids["b"], ids["c"]}

    d = store.reserve(sid, '{"d": 1}', "h-d")  # a later candidate rewrites the front: a stays off it
    assert d is not None
    store.finish(d, "COMPLETE", accuracy=0.5, cost={"macs": 100, "params": 1, "bytes": 4, "latency": 1.0})
    assert {r.id for r in store.front(sid)} == {ids["b"], ids["c"], d}


def test_a_measurement_without_a_verdict_is_judged_later_without_measuring_again(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    sid = _study(store, budget={"latency": "5ms"})
    cid = store.reserve(sid, "{}", "h")
    assert cid is not None
    store.finish(cid, "COMPLETE", accuracy=0.9, cost={"macs": 1, "params": 1, "bytes": 4, "latency": 4.0})
    assert store.record_measured_latency(cid, _timed(7.0, 6.9, 7.2))  # measured by a version without verdicts
    assert [r.id for r in store.front(sid)] == [cid] and "over_cap" not in (store.front(sid)[0].device_latency or {})
    assert store.record_measured_latency(cid, {}, cap_ms=5.0)  # judged on the stored measurement
    row = store.candidate(sid, id=cid)
    assert row.over_cap and row.device_latency["measured_ms"] == 7.0  # type: ignore[index]
    assert store.front(sid) == [] and best_within_cap([row]) is None
    assert not store.record_measured_latency(cid, {}, cap_ms=5.0)  # measured and judged: nothing to write


def test_a_study_profile_is_stored_per_study_beside_the_cached_one(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    a, b, k1 = (f"{x}-{uuid.uuid4().hex[:8]}" for x in ("refit-a", "refit-b", "k1"))  # PostgreSQL's rows persist
    sid = _study(store, a)
    _study(store, b)
    store.save_profile(k1, '{"cached": 1}', device="cpu", runtime="torch", threads=2, batch=1)
    assert store.study_profile(a, k1) is None
    store.save_study_profile(sid, k1, '{"refit": 1}', [[7, 1.5]])
    store.save_study_profile(sid, k1, '{"refit": 2}', [[7, 1.5], [8, 2.5]])  # a later refit replaces it
    assert store.study_profile(a, k1) == '{"refit": 2}'
    assert store.study_profile(b, k1) is None and store.study_profile(a, "other-key") is None
    assert store.profile(k1) == '{"cached": 1}'  # the cached profile other studies start from is untouched
