"""The store's contract, over SQLite and a real PostgreSQL server (started by .ci/run)."""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from storage import StoreError, StudyFullError, StudyMismatchError, StudyStore, pareto_front

PG_URL = os.environ.get("PRUNETUNE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PRUNETUNE_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        pytest.skip('no PostgreSQL server: run `eval "$(bash scripts/postgres.sh start)"`')
    return PG_URL


def _study(store: StudyStore, name: str | None = None, budget: dict | None = None) -> int:
    return store.ensure_study(
        name or f"s-{uuid.uuid4().hex[:8]}",
        model_spec="zoo:resnet20",
        data_spec="digits",
        budget=budget or {"macs": "50%"},
        space_options={"importance": "l1"},
        base_cost={"macs": 1000, "params": 100, "bytes": 400},
        base_accuracy=0.98,
    )


def test_rows_survive_a_new_store_and_plans_are_unique(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store, "persist-" + uuid.uuid4().hex[:6])
    a = store.reserve(sid, '{"prune": {"a": 0.5}}', "hash-a", trial_number=0)
    assert a is not None
    assert store.reserve(sid, '{"prune": {"a": 0.5}}', "hash-a", trial_number=1) is None  # same plan: refused
    store.finish(a, "COMPLETE", accuracy=0.9, cost={"macs": 500, "params": 50, "bytes": 200}, seconds=1.5)
    again = StudyStore(url)
    rows = again.candidates(sid)
    assert [(r.plan_hash, r.status, r.accuracy, r.macs) for r in rows] == [("hash-a", "COMPLETE", 0.9, 500)]
    assert [r.id for r in again.front(sid)] == [a]


def test_front_table_equals_brute_force(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    rng = random.Random(1)
    points = []
    for i in range(40):
        cid = store.reserve(sid, f'{{"i": {i}}}', f"h{i}", trial_number=i)
        assert cid is not None
        status = rng.choice(["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"])
        acc, macs = round(rng.uniform(0.5, 1.0), 2), rng.randint(100, 1000)
        store.finish(cid, status, accuracy=acc, cost={"macs": macs, "params": 1, "bytes": 4})
        if status == "COMPLETE":
            points.append((cid, acc, macs))
        front = {r.id for r in store.front(sid)}
        expected = {points[k][0] for k in pareto_front([(-a, m) for _, a, m in points])}
        brute = {
            c for c, a, m in points
            if not any((a2 >= a and m2 <= m) and (a2 > a or m2 < m) for _, a2, m2 in points)
        }  # fmt: skip
        assert front == expected == brute


def test_running_candidates_fail_after_a_crash(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    cid = store.reserve(sid, "{}", "h-run")
    assert cid is not None
    assert store.fail_running(sid) == 1
    (row,) = store.candidates(sid)
    assert row.status == "FAIL" and "RUNNING" in (row.error or "")
    store.delete(cid)
    assert store.reserve(sid, "{}", "h-run") is not None  # a failed plan may be retried once deleted


def test_reused_study_name_must_match(url: str) -> None:
    store = StudyStore(url)
    name = "same-" + uuid.uuid4().hex[:6]
    sid = _study(store, name)
    assert _study(store, name) == sid
    with pytest.raises(StudyMismatchError, match="exists with budget="):
        _study(store, name, budget={"macs": "30%"})


def test_bad_status_is_refused_without_writing(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    cid = store.reserve(sid, "{}", "h-bad")
    assert cid is not None
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish(cid, "DONE")
    assert store.candidates(sid)[0].status == "RUNNING"


def test_front_is_plain_sql(url: str) -> None:
    store = StudyStore(url)
    name = "sql-" + uuid.uuid4().hex[:6]
    sid = _study(store, name)
    for i, (acc, macs) in enumerate([(0.9, 500), (0.8, 600), (0.95, 900)]):
        cid = store.reserve(sid, "{}", f"p{i}")
        assert cid is not None
        store.finish(cid, "COMPLETE", accuracy=acc, cost={"macs": macs, "params": 1, "bytes": 4})
    engine = create_engine(url.replace("postgresql+psycopg", "postgresql+psycopg"))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.accuracy FROM prunetune_candidates c JOIN prunetune_pareto p ON p.candidate_id = c.id "
                "JOIN prunetune_studies s ON s.id = c.study_id WHERE s.name = :n ORDER BY c.macs"
            ),
            {"n": name},
        ).all()
    assert [r[0] for r in rows] == [0.9, 0.95]


@pytest.mark.parametrize(
    ("bad", "exc", "message"),
    [
        ("not a url", ValueError, "malformed storage URL"),
        ("mysql://x@localhost/db", ValueError, "supports sqlite and postgresql"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", StoreError, "cannot open storage"),
    ],
)
def test_bad_urls_are_one_line_errors(bad: str, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message) as e:
        StudyStore(bad)
    assert "\n" not in str(e.value)


def test_reserve_stops_at_the_study_limit(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    assert store.reserve(sid, "{}", "l1", limit=2) is not None
    assert store.reserve(sid, "{}", "l2", limit=2) is not None
    with pytest.raises(StudyFullError):
        store.reserve(sid, "{}", "l3", limit=2)
    assert store.count(sid) == 2  # the refused reservation left nothing behind


def test_stale_candidates_are_claimed_once(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    dead = store.reserve(sid, "{}", "dead", worker="host:1")
    alive = store.reserve(sid, "{}", "alive", worker="host:2")
    assert dead is not None and alive is not None

    def is_dead(w: str | None) -> bool:
        return w == "host:1"

    claimed = store.claim_stale(sid, "host:3", grace_seconds=3600, is_dead=is_dead)
    assert [(c.id, c.worker, c.attempts, c.status) for c in claimed] == [(dead, "host:3", 2, "RUNNING")]
    assert store.claim_stale(sid, "host:4", grace_seconds=3600, is_dead=is_dead) == []  # host:3 owns it now
    store.heartbeat(alive)
    # a heartbeat older than the grace period is stale too, whoever the worker is
    time.sleep(0.05)
    late = store.claim_stale(sid, "host:4", grace_seconds=0.01, is_dead=lambda w: False)
    assert sorted(c.id for c in late) == sorted([dead, alive])


def test_latency_objective_uses_the_first_batch_size(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    objs = ("accuracy", "macs", "latency")
    for i, (acc, macs, ms) in enumerate([(0.9, 500, 2.0), (0.9, 500, 1.0), (0.8, 400, 3.0)]):
        cid = store.reserve(sid, "{}", f"q{i}")
        assert cid is not None
        store.finish(cid, "COMPLETE", accuracy=acc, cost={"macs": macs, "params": 1, "bytes": 4},
                     latency_ms={1: ms, 8: 10 * ms}, objectives=objs)  # fmt: skip
    assert [r.latency for r in store.front(sid)] == [3.0, 1.0]
    with pytest.raises(ValueError, match="objectives must be among"):
        store.finish(cid, "COMPLETE", objectives=("accuracy", "flops"))


def test_study_is_a_frozen_record(url: str) -> None:
    import dataclasses

    from storage import StudyRecord

    store = StudyStore(url)
    name = "rec-" + uuid.uuid4().hex[:6]
    sid = _study(store, name)
    info = store.study(name)
    assert isinstance(info, StudyRecord)
    assert (info.id, info.name, info.model_spec, info.data_spec) == (sid, name, "zoo:resnet20", "digits")
    assert (info.budget, info.space_options, info.base_accuracy) == ({"macs": "50%"}, {"importance": "l1"}, 0.98)
    assert info.base_cost == {"macs": 1000, "params": 100, "bytes": 400} and info.created is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="no study named 'missing'"):
        store.study("missing")


def test_candidate_by_id_trial_or_plan_hash(url: str) -> None:
    store = StudyStore(url)
    sid, other = _study(store), _study(store)
    a = store.reserve(sid, "{}", "ha", trial_number=3)
    b = store.reserve(other, "{}", "hb", trial_number=3)
    assert a is not None and b is not None
    assert store.candidate(sid, id=a).plan_hash == "ha"
    assert store.candidate(sid, trial_number=3).id == a
    assert store.candidate(sid, plan_hash="ha").id == a
    assert store.candidate(sid, id=a, trial_number=3, plan_hash="ha").id == a
    with pytest.raises(ValueError, match=f"the study has no candidate for id {b}"):
        store.candidate(sid, id=b)  # another study's candidate
    with pytest.raises(ValueError, match="needs an id, a trial_number or a plan_hash"):
        store.candidate(sid)


def test_the_front_compares_candidates_at_a_rung_both_reached(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    # name: (MACs, [[steps, accuracy] per rung reached])
    made = {
        "a": (100, [[50, 0.80], [200, 0.90]]),  # rung 1
        "b": (100, [[50, 0.82]]),  # better than a at rung 0, never promoted: a cannot knock it off, nor it a
        "c": (90, [[50, 0.70]]),  # dominated at rung 0 by d (cheaper, better)
        "d": (80, [[50, 0.75], [200, 0.85]]),  # rung 1: g is better at rung 1 but costs more
        "e": (120, [[50, 0.81], [200, 0.89]]),  # rung 1: dominated by a at rung 1 (costs more, less accurate)
        "f": (60, [[50, 0.60]]),  # the cheapest: on the front
        "g": (85, [[50, 0.74], [200, 0.86], [800, 0.87]]),  # rung 2: only rung-2 candidates could remove it
    }
    ids = {}
    for name, (macs, rungs) in made.items():
        cid = store.reserve(sid, "{}", f"h-{name}")
        assert cid is not None
        store.finish(cid, "COMPLETE", accuracy=rungs[-1][1], cost={"macs": macs}, rungs=rungs)
        ids[cid] = name
    front = {ids[r.id] for r in store.front(sid)}
    assert front == {"a", "b", "d", "f", "g"}
    row = store.candidate(sid, id=next(c for c, n in ids.items() if n == "g"))
    assert (row.rung, row.accuracy_at(0), row.accuracy_at(2), row.accuracy_at(3)) == (2, 0.74, 0.87, None)


def test_only_the_owner_of_a_running_candidate_records_its_rungs(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    cid = store.reserve(sid, "{}", "h-rung", worker="host:1")
    assert cid is not None
    assert store.record_rung(cid, 0, 50, 0.8, {"macs": 10}, "host:1")
    assert not store.record_rung(cid, 2, 800, 0.9, {"macs": 10}, "host:1")  # rung 1 was never recorded
    (claimed,) = store.claim_stale(sid, "host:2", grace_seconds=3600, is_dead=lambda owner: owner == "host:1")
    assert claimed.rungs is None and claimed.rung is None  # evaluated again from rung 0
    assert not store.record_rung(cid, 1, 200, 0.9, {"macs": 10}, "host:1")  # the old owner lost it
    assert store.record_rung(cid, 0, 50, 0.7, {"macs": 10}, "host:2")
    assert store.finish(cid, "COMPLETE", accuracy=0.7, cost={"macs": 10}, rungs=[[50, 0.7]])
    assert not store.record_rung(cid, 1, 200, 0.9, {"macs": 10}, "host:2")  # finished
    assert store.candidate(sid, id=cid).rungs == [[50, 0.7]]


def test_rungs_keep_the_loss_when_it_is_finite(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    cid = store.reserve(sid, "{}", "h-loss", worker="host:1")
    assert cid is not None
    assert store.record_rung(cid, 0, 50, 0.8, {"macs": 10}, "host:1", loss=0.61)
    assert store.candidate(sid, id=cid).rungs == [[50, 0.8, 0.61]]
    assert store.finish(
        cid, "COMPLETE", accuracy=0.1, cost={"macs": 10}, rungs=[[50, 0.8, 0.61], [200, 0.1, float("nan")]]
    )
    row = store.candidate(sid, id=cid)
    assert row.rungs == [[50, 0.8, 0.61], [200, 0.1]]  # a diverged rung's NaN is not stored (JSON has none)
    assert (row.score_after(50, "loss"), row.score_after(200, "loss"), row.score_after(200)) == (-0.61, None, 0.1)


def test_best_within_cap_ranks_the_longest_trained_by_the_studys_score(url: str) -> None:
    from storage import best_within_cap

    store = StudyStore(url)
    sid = _study(store)
    rungs = {"a": [[50, 0.80, 0.70]], "b": [[50, 0.79, 0.50]], "c": [[50, 0.70, 0.90], [200, 0.75, 0.80]]}
    for name, r in rungs.items():
        cid = store.reserve(sid, "{}", f"h-{name}", worker="host:1")
        assert cid is not None and store.finish(cid, "COMPLETE", accuracy=r[-1][1], cost={"macs": 10}, rungs=r)
    rows = store.candidates(sid)
    assert best_within_cap(rows).plan_hash == best_within_cap(rows, "loss").plan_hash == "h-c"  # 200 steps
    below = [r for r in rows if r.plan_hash != "h-c"]
    assert best_within_cap(below).plan_hash == "h-a"  # the most accurate
    assert best_within_cap(below, "loss").plan_hash == "h-b"  # the lowest validation loss
    assert best_within_cap([]) is None


def test_activity_counts_candidates_finished_and_finalized(url: str) -> None:
    store = StudyStore(url)
    sid = _study(store)
    assert store.activity(sid) == (0, 0, 0)
    a = store.reserve(sid, '{"prune": {"a": 0.1}}', f"act-a-{uuid.uuid4().hex[:8]}")
    b = store.reserve(sid, '{"prune": {"a": 0.2}}', f"act-b-{uuid.uuid4().hex[:8]}")
    assert a is not None and b is not None
    assert store.activity(sid) == (2, 0, 0)
    store.finish(a, "COMPLETE", accuracy=0.9, cost={"macs": 500, "params": 50, "bytes": 200})
    assert store.activity(sid) == (2, 1, 0)
    store.record_test_accuracy(a, 0.88)
    store.finish(b, "FAIL", error="boom")
    assert store.activity(sid) == (2, 2, 1)
