"""The queue of submitted studies: submit, claim by compare-and-swap, finish; over SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid

import pytest

from storage import StoreError, StudyStore, Submissions, SubmissionStatus
from tests.storage.test_store import _study, url  # noqa: F401  (the SQLite + PostgreSQL fixture)


def test_a_submission_is_claimed_once_and_finished_by_its_worker(url: str) -> None:  # noqa: F811
    queue = Submissions(StudyStore(url))
    name = f"sub-{uuid.uuid4().hex[:8]}"
    sub = queue.submit(name, {"search": {"study": name}})
    assert (sub.status, sub.worker, sub.config) == (SubmissionStatus.QUEUED, None, {"search": {"study": name}})
    with pytest.raises(ValueError, match=f"study name '{name}' is taken"):
        queue.submit(name, {})
    claimed = queue.claim("host:1")
    while claimed is not None and claimed.id != sub.id:  # PostgreSQL's database is shared with other tests
        queue.finish(claimed.id, "host:1")
        claimed = queue.claim("host:1")
    assert claimed is not None and (claimed.status, claimed.worker) == ("running", "host:1")
    with pytest.raises(StoreError, match="not running under worker host:2"):
        queue.finish(sub.id, "host:2")
    queue.finish(sub.id, "host:1", error="bad input: x")
    done = queue.get(sub.id)
    assert (done.status, done.error) == (SubmissionStatus.FAILED, "bad input: x")


def test_two_workers_racing_claim_each_submission_once(url: str) -> None:  # noqa: F811
    queue = Submissions(StudyStore(url))
    mine = {queue.submit(f"race-{uuid.uuid4().hex[:8]}", {}).id for _ in range(6)}
    got: dict[str, list[int]] = {"a": [], "b": []}

    def work(worker: str) -> None:
        q = Submissions(StudyStore(url))
        while (sub := q.claim(worker)) is not None:
            got[worker].append(sub.id)
            q.finish(sub.id, worker)

    threads = [threading.Thread(target=work, args=(w,)) for w in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = got["a"] + got["b"]
    assert len(claimed) == len(set(claimed)) and mine <= set(claimed)
    assert all(queue.get(i).status == SubmissionStatus.DONE for i in mine)


def test_a_submission_may_not_take_an_existing_studys_name(url: str) -> None:  # noqa: F811
    store = StudyStore(url)
    name = f"taken-{uuid.uuid4().hex[:8]}"
    _study(store, name)
    with pytest.raises(ValueError, match="is taken"):
        Submissions(store).submit(name, {})


def test_a_submission_whose_worker_stopped_is_queued_again(url: str) -> None:  # noqa: F811
    queue = Submissions(StudyStore(url))
    sub = queue.submit(f"stopped-{uuid.uuid4().hex[:8]}", {})
    claimed = queue.claim("gone:1")
    while claimed is not None and claimed.id != sub.id:
        queue.finish(claimed.id, "gone:1")
        claimed = queue.claim("gone:1")
    assert sub.id in queue.requeue_stopped(lambda owner: owner == "gone:1")
    again = queue.get(sub.id)
    assert (again.status, again.worker, again.error) == ("queued", None, "worker gone:1 stopped: run again")
    assert sub.id not in queue.requeue_stopped(lambda owner: True)  # queued now, not running
