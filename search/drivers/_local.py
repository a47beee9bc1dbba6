"""The local driver (``search.backend = "local"``): this process evaluates candidates one after another.

Several processes may run the same study at once on one PostgreSQL URL (each a
worker): the store hands each plan to one of them, and a worker that dies
leaves its candidate to the next one that looks (stale claims).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from search.drivers._base import Driver
from spaces import check_interrupt

if TYPE_CHECKING:
    from search.study._study import RunResult, Search

__all__ = ["LocalDriver"]


class LocalDriver(Driver):
    name = "local"

    def run(self, search: Search, on_candidate: Callable[[RunResult], None] | None) -> RunResult:
        from storage import StudyFullError

        p, teller, runner = search.prepared, search.teller, search.runner
        res = search.new_result()
        seeds = search.seed_plans()
        first = True
        while True:
            check_interrupt()  # a safe point: between two candidates
            if search.out_of_time(res):  # search.time: the next candidate would not end in time
                break
            for row in search.claim_stale(res, orphans=first):
                runner.evaluate(row.id, *search.relive(row))
            first = False
            res.total = p.store.count(p.study_id)
            if res.total >= search.cfg.search.candidates:
                break
            prop = search.propose(seeds)
            try:
                cid = search.reserve(prop, res)
            except StudyFullError:
                break
            if cid is None:
                if res.stopped:
                    break
                continue
            recorder = teller.recorder(prop.trial_number, prop.params, cid, prop.plan.hash, prop.kind)
            runner.evaluate(cid, prop.plan, prop.cost, recorder)
            res.evaluated += 1
            res.total = p.store.count(p.study_id)
            if on_candidate is not None:
                on_candidate(res)
        return search.conclude(res)
