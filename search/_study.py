"""The local search driver: an Optuna ask/tell study over our plans, stored in one SQL database.

One worker (one process) runs :meth:`Search.run`; several workers may run the
same study against one PostgreSQL URL. Per candidate:

1. **sample**: the sampler proposes per-group prune ratios (and ranks), or the
   next seed plan (the allocator's, then the uniform one) is taken first;
2. **repair**: ``space.fit`` moves the plan onto the budget, so every candidate
   that is evaluated and stored meets it; the budget's slack goes to Optuna as
   ``trial.set_constraint`` values (always <= 0 after repair);
3. **live** it (:mod:`search._candidate`): reserve, apply + evaluate, record.
   A plan the study already holds is not evaluated again (the sampler is told
   the stored result); a full study ends the loop. Optuna is told each outcome
   with the same mapping of statuses as Ray Tune's Optuna searcher.

A killed worker leaves at most its current candidate RUNNING; the next worker
(or a rerun of the same command) claims it (``StudyStore.claim_stale``), fails
its old Optuna trial and evaluates the plan again. The study is done when it
holds ``search.candidates`` candidates, counted over all workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search._candidate import CandidateRunner, Timings, is_dead, objective_values, worker_id
from search._config import Config
from search._prepare import Prepared, prepare
from search._samplers import make_sampler
from search._space import params_from_plan, plan_from_params
from spaces import Status

if TYPE_CHECKING:
    import optuna
    from optuna.trial import Trial, TrialState

    from evaluators import Evaluator
    from spaces import Plan
    from storage import CandidateRow, StudyStore

__all__ = ["RunResult", "Search"]

_MAX_DUPLICATES_IN_A_ROW = 50


def _trial_state(status: Status) -> TrialState:
    """Our candidate status as Optuna's ``TrialState``."""
    from optuna.trial import TrialState

    return {Status.COMPLETE: TrialState.COMPLETE, Status.PRUNED: TrialState.PRUNED, Status.FAIL: TrialState.FAIL}[
        status
    ]


@dataclass
class RunResult:
    study: str
    study_id: int
    evaluated: int  # candidates this worker evaluated
    duplicates: int  # sampled plans already in the study
    retried: int  # candidates of stopped workers evaluated again
    total: int  # candidates in the study
    front: list[CandidateRow]
    timings: Timings
    base_accuracy: float | None
    base_cost: dict[str, Any]
    stopped: str | None = None  # why the loop ended early, if it did
    events: list[str] = field(default_factory=list)


class Search:
    """A study run by this process. ``prepare`` validates everything before any write; ``run`` evaluates.

    Bad input (unknown spec, infeasible budget, unreachable or malformed storage,
    a reused study name with another model, data or budget, other objectives)
    raises a one-line ``ValueError``/``PruneTuneError`` and leaves an existing
    study untouched. ``evaluator`` and ``store`` default to the config's.
    """

    def __init__(self, config: Config, *, evaluator: Evaluator | None = None, store: StudyStore | None = None) -> None:
        self.cfg = config
        self.worker = worker_id()
        self.timings = Timings()
        self._evaluator = evaluator
        self._store = store
        self._prepared: Prepared | None = None
        self._study: optuna.Study | None = None
        self._runner: CandidateRunner | None = None

    @property
    def prepared(self) -> Prepared:
        """What :meth:`prepare` built (the store, the space, the base model, ...)."""
        if self._prepared is None:
            raise RuntimeError("call Search.prepare() first")
        return self._prepared

    # ------------------------------------------------------------------ setup
    def prepare(self, *, progress: bool = False) -> Search:
        import torch

        p = prepare(self.cfg, store=self._store, evaluator=self._evaluator, progress=progress)
        self._study = self._open_optuna_study(p)
        self._runner = CandidateRunner(p, self.worker, self.timings)
        self._prepared = p
        torch.manual_seed(self.cfg.evaluate.seed)
        return self

    def _open_optuna_study(self, p: Prepared) -> optuna.Study:
        """The study's Optuna twin (created, or loaded when its objectives match ours)."""
        import optuna
        from optuna.study import StudyDirection

        cfg = self.cfg
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        objectives = [o.value for o in p.objectives]
        directions = [StudyDirection[o.direction.name] for o in p.objectives]  # MAXIMIZE / MINIMIZE
        storage = p.store.optuna_storage()
        existing = [s for s in storage.get_all_studies() if s.study_name == p.study]
        if existing:
            had = existing[0].user_attrs.get("prunetune_objectives")
            same_dirs = list(existing[0].directions) == directions
            if (had is not None and had != objectives) or not same_dirs:
                raise ValueError(
                    f"study {p.study!r} exists with objectives {had}, not {objectives}: use another study name"
                )
        # a rerun continues with a fresh stream (resampling the same plans would only find duplicates)
        seed = cfg.search.seed + 1_000_003 * cfg.search.worker + 7919 * p.store.count(p.study_id)
        study = optuna.create_study(
            storage=storage,
            study_name=p.study,
            directions=directions,
            sampler=make_sampler(cfg.search.sampler, seed, cfg.search.candidates),
            load_if_exists=True,
        )
        if not existing or existing[0].user_attrs.get("prunetune_objectives") is None:
            study.set_user_attr("prunetune_objectives", objectives)
        return study

    def _parts(self) -> tuple[Prepared, optuna.Study, CandidateRunner]:
        if self._prepared is None or self._study is None or self._runner is None:
            self.prepare()
        if self._prepared is None or self._study is None or self._runner is None:
            raise RuntimeError("Search.prepare() did not prepare the study")
        return self._prepared, self._study, self._runner

    # ------------------------------------------------------------------ the loop
    def seed_plans(self) -> list[tuple[str, Plan]]:
        p = self.prepared
        out = []
        for kind in self.cfg.search.seed_plans:
            if kind == "allocator":
                allocation = p.space.allocate(p.budget, prune=True, rank=self.cfg.space.rank)
                out.append(("allocator", p.space.fit(allocation.plan, p.budget)))
            else:
                out.append(("uniform", p.uniform))
        return out

    def run(self, on_candidate: Callable[[RunResult], None] | None = None) -> RunResult:
        """Evaluate candidates until the study holds ``search.candidates`` of them."""
        from storage import StudyFullError

        p, study, runner = self._parts()
        cfg = self.cfg
        target = cfg.search.candidates
        res = RunResult(
            study=p.study,
            study_id=p.study_id,
            evaluated=0,
            duplicates=0,
            retried=0,
            total=0,
            front=[],
            timings=self.timings,
            base_accuracy=p.base_accuracy,
            base_cost=p.base_cost.as_dict(),
        )
        seeds = self.seed_plans()
        in_a_row, first = 0, True
        while True:
            res.retried += self._retry_stale(res, orphans=first)
            first = False
            res.total = p.store.count(p.study_id)
            if res.total >= target:
                break
            t0 = time.perf_counter()
            trial: Trial | None = None
            if seeds:
                kind, plan = seeds.pop(0)
                params = params_from_plan(p.space, plan, p.dists, method=cfg.space.method)
                t1 = time.perf_counter()
            else:
                kind = "sampled"
                trial = study.ask(p.dists)
                trial.set_user_attr("worker", self.worker)
                params = trial.params
                plan = plan_from_params(p.space, params, method=cfg.space.method)
                t1 = time.perf_counter()
                plan = p.space.fit(plan, p.budget)
            cost = p.space.cost(plan)
            slack = p.budget.slack(cost, p.base_cost)
            if any(v > 0 for v in slack.values()):  # fit guarantees this never happens
                raise RuntimeError(f"internal error: repaired plan {plan.hash} exceeds the budget: {slack}")
            if trial is not None:
                for key, value in slack.items():
                    trial.set_constraint(key, value)
                trial.set_user_attr("plan_hash", plan.hash)
            t2 = time.perf_counter()
            self.timings.sample += t1 - t0
            self.timings.repair += t2 - t1
            try:
                cid = runner.reserve(plan, trial.number if trial else None)
            except StudyFullError:
                if trial is not None:
                    trial.set_user_attr("reason", "not evaluated: the study already holds its candidates")
                    self._tell(trial, None, Status.FAIL)
                break
            if cid is None:  # a seed plan already evaluated (on resume), or a sampled duplicate
                if trial is not None:
                    res.duplicates += 1
                    in_a_row += 1
                    self._tell_duplicate(trial, plan.hash)
                    if in_a_row >= _MAX_DUPLICATES_IN_A_ROW:
                        res.stopped = (
                            f"the sampler proposed {in_a_row} plans in a row that the study already holds: "
                            "the space looks exhausted at this budget"
                        )
                        break
                continue
            in_a_row = 0
            runner.evaluate(cid, plan, cost, self._recorder(trial, params, cid, plan.hash, kind))
            res.evaluated += 1
            res.total = p.store.count(p.study_id)
            if on_candidate is not None:
                on_candidate(res)
        res.front = p.store.front(p.study_id)
        res.total = p.store.count(p.study_id)
        return res

    def _tell(self, trial: Trial, values: list[float] | None, status: Status) -> None:
        _, study, _ = self._parts()
        if values is not None and status is Status.COMPLETE:
            study.tell(trial, values)
        else:
            study.tell(trial, state=_trial_state(status))

    def _tell_duplicate(self, trial: Trial, plan_hash: str) -> None:
        p = self.prepared
        row = p.store.candidate(p.study_id, plan_hash=plan_hash)
        trial.set_user_attr("duplicate_of", row.id)
        if row.status is Status.COMPLETE and row.accuracy is not None:
            cost = {"macs": row.macs or 0.0, "params": row.params or 0.0, "bytes": row.bytes or 0.0}
            values = objective_values(p.objectives, row.accuracy, cost, row.latency)
            self._tell(trial, values, Status.COMPLETE)
        else:
            self._tell(trial, None, Status.PRUNED if row.status is Status.PRUNED else Status.FAIL)

    def _recorder(
        self, trial: Trial | None, params: dict[str, Any], cid: int, plan_hash: str, kind: str
    ) -> Callable[[Status, list[float] | None], int | None]:
        """Tells Optuna a candidate's outcome: the asked trial, or (seed plans, retries) a trial added for it."""

        def record(status: Status, values: list[float] | None) -> int | None:
            if trial is not None:
                self._tell(trial, values, status)
                return int(trial.number)
            return self._add_trial(params, values, status, cid, plan_hash, kind)

        return record

    def _add_trial(
        self, params: dict[str, Any], values: list[float] | None, status: Status, cid: int, h: str, kind: str
    ) -> int | None:
        import optuna

        p, study, _ = self._parts()
        frozen = optuna.trial.create_trial(
            state=_trial_state(status),
            params=params,
            distributions=p.dists,
            values=values if status is Status.COMPLETE else None,
            user_attrs={"candidate_id": cid, "plan_hash": h, "kind": kind, "worker": self.worker},
        )
        study.add_trial(frozen)
        for t in reversed(study.get_trials(deepcopy=False)):
            if t.user_attrs.get("candidate_id") == cid:
                return int(t.number)
        return None

    def _retry_stale(self, res: RunResult, *, orphans: bool = False) -> int:
        """Claim and evaluate again the candidates that stopped workers left RUNNING."""
        from optuna.trial import TrialState

        from spaces import Plan

        p, study, runner = self._parts()
        rows = p.store.claim_stale(
            p.study_id, self.worker, grace_seconds=self.cfg.storage.grace_seconds, is_dead=is_dead
        )
        for row in rows:
            res.events.append(f"candidate {row.id} ({row.error}): evaluating it again")
            if row.trial_number is not None:
                trials = study.get_trials(deepcopy=False)
                if row.trial_number < len(trials) and trials[row.trial_number].state == TrialState.RUNNING:
                    study.tell(row.trial_number, state=TrialState.FAIL)
            plan = Plan.from_json(row.plan)
            params = params_from_plan(p.space, plan, p.dists, method=self.cfg.space.method)
            runner.evaluate(row.id, plan, p.space.cost(plan), self._recorder(None, params, row.id, plan.hash, "retry"))
        if not (orphans or rows):
            return 0
        # Optuna trials asked by dead workers of this host that never reached the store
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_dead(t.user_attrs.get("worker")) and t.user_attrs.get("worker"):
                study.tell(t.number, state=TrialState.FAIL)
        return len(rows)
