"""The search drivers: an Optuna ask/tell study over our plans, stored in one SQL database.

:class:`Search` holds what every driver shares; ``search.backend`` picks who
schedules the candidates: this process, one after another (``local``, the loop
of :meth:`Search.run`; several processes may share one PostgreSQL URL), or a Ray
cluster (``ray``, :mod:`search.drivers._ray`). Per candidate, whoever schedules it:

1. **propose** (:meth:`Search.propose`): the sampler proposes per-group prune
   ratios (and ranks) and a cost level between ``search.floor`` and the cap, or
   the next seed plan (the allocator's at the cap and at the floor, then the
   uniform one) is taken first;
2. **repair**: ``space.fit`` moves the plan onto the budget scaled to its level,
   so every candidate that is evaluated and stored meets the budget; the
   budget's slack goes to Optuna as ``trial.set_constraint`` values (always
   <= 0 after repair);
3. **reserve** (:meth:`Search.reserve`): a plan the study already holds is not
   evaluated again (the sampler is told the stored result); a full study ends
   the run;
4. **live** it (:mod:`search.study._candidate`): apply + evaluate, then record. Optuna
   is told each outcome by a :class:`Teller`, with the same mapping of statuses
   as Ray Tune's Optuna searcher, in the process that evaluated it.

A killed worker leaves at most its current candidates RUNNING; the next worker
(or a rerun of the same command) claims them (:meth:`Search.claim_stale`), fails
their old Optuna trials and evaluates the plans again. The study is done when it
holds ``search.candidates`` candidates, counted over all workers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from search._config import Config
from search.drivers._base import driver
from search.preparation._prepare import Prepared, allocator_sensitivity, prepare
from search.sampling._params import level_of, params_from_plan, plan_from_params
from search.sampling._samplers import make_sampler
from search.study._candidate import CandidateRunner, Recorder, Timings, is_dead, objective_values, worker_id
from search.study._deadline import Deadline
from spaces import CandidateKind, Status, protected, safe_points
from spaces.dimensions import Allocated, Sampled, with_role

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial, TrialState

    from evaluators import Evaluator
    from spaces import Budget, Cost, Plan, Sensitivity
    from storage import CandidateRow, StudyStore

__all__ = ["Proposal", "RunResult", "Search", "Teller"]

_MAX_DUPLICATES_IN_A_ROW = 50
_UNNAMED_GRACE_S = 3.0  # a trial asked this long ago that never named its worker belongs to a killed one


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
    on_time: bool = False  # it ended on its time limit (search.time), before the study held its candidates
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Proposal:
    """A repaired plan, ready to be reserved: where it came from, its cost and the sampler's view of it."""

    kind: CandidateKind  # a seed plan's kind, or sampled
    plan: Plan
    cost: Cost
    params: dict[str, Any]  # the sampler's parameters for the plan
    trial: Trial | None  # the asked Optuna trial (sampled plans only)

    @property
    def trial_number(self) -> int | None:
        return None if self.trial is None else int(self.trial.number)


class Teller:
    """Tells the study's Optuna twin the outcome of candidates: in a driver, or in a Ray trial on another node.

    Idempotent, because a scheduler may run a candidate's life more than once
    (Ray Tune retries a trial whose node died; a rerun claims what a killed
    worker left): a trial that an earlier attempt already finished is left as
    it is, and a candidate gets at most one added trial.
    """

    def __init__(self, study: optuna.Study, prepared: Prepared, worker: str) -> None:
        self.study = study
        self.prepared = prepared
        self.worker = worker

    def tell(self, number: int, values: list[float] | None, status: Status) -> None:
        if values is not None and status is Status.COMPLETE:
            self.study.tell(number, values, skip_if_finished=True)
        else:
            self.study.tell(number, state=_trial_state(status), skip_if_finished=True)

    def tell_duplicate(self, trial: Trial, plan_hash: str) -> None:
        """Tell a sampled plan that the study already holds the stored candidate's result."""
        p = self.prepared
        row = p.store.candidate(p.study_id, plan_hash=plan_hash)
        trial.set_user_attr("duplicate_of", row.id)
        first = row.accuracy_at(0)
        if row.status is Status.COMPLETE and first is not None:  # rung 0: what every trial is told
            cost = {"macs": row.macs or 0.0, "params": row.params or 0.0, "bytes": row.bytes or 0.0}
            self.tell(trial.number, objective_values(p.objectives, first, cost, row.latency), Status.COMPLETE)
        else:
            self.tell(trial.number, None, Status.PRUNED if row.status is Status.PRUNED else Status.FAIL)

    def recorder(
        self, number: int | None, params: dict[str, Any], cid: int, plan_hash: str, kind: CandidateKind
    ) -> Recorder:
        """Records a candidate's outcome: on its asked trial, or (seed plans, retries) on a trial added for it.

        Called only by the worker whose ``StudyStore.finish`` recorded the candidate,
        so a plan is told once. An asked trial that is already finished with
        another outcome (a rerun claimed the candidate of a worker it thought dead
        and failed its trial, and that worker finished first after all) keeps its
        state; the outcome goes on a trial added with the same parameters.
        """

        def record(status: Status, values: list[float] | None) -> int | None:
            if number is None:
                return self.add_trial(params, values, status, cid, plan_hash, kind)
            told = self._finished(number)
            if told is None:
                self.tell(number, values, status)
                return number
            if told.state == _trial_state(status) and (status is not Status.COMPLETE or told.values == values):
                return number  # an earlier attempt of this candidate told it
            return self.add_trial(dict(told.params), values, status, cid, plan_hash, kind)

        return record

    def _finished(self, number: int) -> FrozenTrial | None:
        """Trial ``number`` of the study, if it is finished."""
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return next((t for t in self.study.get_trials(deepcopy=False, states=done) if t.number == number), None)

    def add_trial(
        self, params: dict[str, Any], values: list[float] | None, status: Status, cid: int, h: str, kind: CandidateKind
    ) -> int | None:
        import optuna

        def added() -> int | None:
            for t in reversed(self.study.get_trials(deepcopy=False)):
                if t.user_attrs.get("candidate_id") == cid and t.state.is_finished():
                    return int(t.number)
            return None

        number = added()  # told by an earlier attempt of this candidate
        if number is not None:
            return number
        frozen = optuna.trial.create_trial(
            state=_trial_state(status),
            params=params,
            distributions=self.prepared.dists,
            values=values if status is Status.COMPLETE else None,
            user_attrs={"candidate_id": cid, "plan_hash": h, "kind": kind, "worker": self.worker},
        )
        self.study.add_trial(frozen)
        return added()


def open_optuna_study(config: Config, p: Prepared) -> optuna.Study:
    """The study's Optuna twin (created, or loaded when its objectives match ours)."""
    import optuna
    from optuna.study import StudyDirection

    cfg = config
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
    if study.metric_names != objectives:  # what optuna-dashboard and optuna.visualization label the axes with
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives)
    return study


class Search:
    """A study run by this process. ``prepare`` validates everything before any write; ``run`` evaluates.

    Bad input (unknown spec, infeasible budget, unreachable or malformed storage,
    a reused study name with another model, data or budget, other objectives,
    an unreachable Ray cluster) raises a one-line ``ValueError``/``PruneTuneError``
    and leaves an existing study untouched. ``evaluator`` and ``store`` default
    to the config's; a Ray driver ships ``evaluator`` (picklable) to its trials.
    """

    def __init__(self, config: Config, *, evaluator: Evaluator | None = None, store: StudyStore | None = None) -> None:
        self.cfg = config
        self.worker = worker_id()
        self.timings = Timings()
        self._evaluator = evaluator
        self._store = store
        self._prepared: Prepared | None = None
        self._study: optuna.Study | None = None
        self._teller: Teller | None = None
        self._runner: CandidateRunner | None = None
        self._in_a_row = 0  # duplicates proposed in a row
        self.deadline = Deadline.of(config.search.time, config.search.time_s, time.monotonic())  # its clock starts now

    @property
    def prepared(self) -> Prepared:
        """What :meth:`prepare` built (the store, the space, the base model, ...)."""
        if self._prepared is None:
            raise RuntimeError("call Search.prepare() first")
        return self._prepared

    @property
    def teller(self) -> Teller:
        return self._parts()[1]

    # ------------------------------------------------------------------ setup
    def prepare(self, *, progress: bool = False) -> Search:
        """Everything before the first candidate, checked before any write (a Ray cluster is connected first)."""
        import torch

        driver(self.cfg.search.backend).connect(self)  # a cluster that cannot be reached fails before any work
        p = self._prepared = prepare(self.cfg, store=self._store, evaluator=self._evaluator, progress=progress)
        if self.cfg.space.sample_by == "blend":
            p = self._prepared = replace(p, anchors=self.anchors())
        with protected():  # Optuna's study is created whole or not at all
            self._study = open_optuna_study(self.cfg, p)
        self._teller = Teller(self._study, p, self.worker)
        self._runner = CandidateRunner(p, self.worker, self.timings)
        self._prepared = p
        torch.manual_seed(self.cfg.evaluate.seed)
        return self

    def _parts(self) -> tuple[Prepared, Teller, CandidateRunner]:
        """What :meth:`prepare` built; preparing is an explicit call, never a side effect of reading these."""
        if self._prepared is None or self._teller is None or self._runner is None:
            raise RuntimeError("call Search.prepare() first")
        return self._prepared, self._teller, self._runner

    # ------------------------------------------------------------------ the shared steps
    def seed_plans(self) -> list[tuple[CandidateKind, Plan, float]]:
        """``(kind, plan, level)`` to evaluate first: the configured seed plans (the allocator's, the uniform and
        the global-ranking plan) at the cap, then at each lower seed level (:meth:`seed_levels`) down to the floor.
        """
        p = self.prepared
        extra = {k: v for dim in with_role(Sampled) for k, v in dim.seed_entries(p.space, p.space_options).items()}
        kinds = [CandidateKind(k) for k in self.cfg.search.seed_plans]
        sens = self._allocator_sensitivity() if CandidateKind.ALLOCATOR in kinds else None
        out: list[tuple[CandidateKind, Plan, float]] = []
        for level in self.seed_levels():
            for kind in kinds:
                below = CandidateKind.ALLOCATOR_FLOOR if kind is CandidateKind.ALLOCATOR and level < 1.0 else kind
                out.append((below, self._one_shot(kind, p.budget.scaled(level), sens, extra), level))
        return out

    def anchors(self) -> dict[str, dict[str, float]]:
        """The prune ratios of the uniform, the global-ranking and the allocator's plan at the cap: what the sampler
        blends with ``space.sample_by = "blend"`` (:func:`search.sampling._blend.blend`)."""
        p = self.prepared
        sens = self._allocator_sensitivity()
        kinds = (CandidateKind.UNIFORM, CandidateKind.GLOBAL, CandidateKind.ALLOCATOR)
        return {kind.value: dict(self._one_shot(kind, p.budget, sens, {}).prune) for kind in kinds}

    def _one_shot(self, kind: CandidateKind, budget: Budget, sens: Sensitivity | None, extra: dict[str, Any]) -> Plan:
        """The seed plan of ``kind`` at ``budget``, with the seed entries (``extra``) of the other dimensions."""
        space = self.prepared.space
        if kind is CandidateKind.ALLOCATOR:
            return self._allocated(budget, sens, extra)
        plan = (
            space.fit(space.uniform_plan(0.0), budget) if kind is CandidateKind.UNIFORM else space.global_plan(budget)
        )
        return space.fit(plan.replace(**extra), budget) if extra else plan

    def seed_levels(self) -> list[float]:
        """The cost levels of the seed plans, fractions of the cap: ``search.seed_levels`` of them, log-spaced from
        the cap (1.0) down to the floor; the cap alone when the study has no range (``floor = "cap"``)."""
        floor, n = self.prepared.floor, self.cfg.search.seed_levels
        if floor >= 1.0 or n == 1:
            return [1.0]
        return [floor ** (i / (n - 1)) for i in range(n)]

    def _allocator_sensitivity(self) -> Sensitivity | None:
        """What the allocator's seeds are valued by: the measured sensitivity (cached per base model) for every
        dimension that takes part in the allocation, unless ranks are searched (they keep the importance and
        energy shares) or ``search.allocator = "importance"``."""
        p = self.prepared
        if self.cfg.search.allocator != "sensitivity" or self.cfg.space.rank:
            return None
        return allocator_sensitivity(p, self._allocator_options())

    def _allocator_options(self) -> dict[str, Any]:
        options = self.prepared.space_options
        return {k: v for dim in with_role(Allocated) for k, v in dim.allocator_options(options).items()}

    def _allocated(self, budget: Budget, sens: Sensitivity | None, extra: dict[str, Any]) -> Plan:
        """The allocator's plan at ``budget``, with the seed entries (``extra``) of the dimensions it did not
        choose, fitted onto the budget (under a latency limit it allocates channels only: ranks' latency is read
        from measured tables, which its linear program does not take)."""
        p, space = self.prepared, self.cfg.space
        more = self._allocator_options()
        rank = space.rank and "latency" not in budget.limits  # the allocator meets a latency cap by pruning alone
        plan = p.space.allocate(budget, rank=rank, method=space.method, sensitivity=sens, **more).plan
        missing = {k: v for k, v in extra.items() if not plan.entries(k)}  # what the allocator did not choose
        return p.space.fit(plan.replace(**missing), budget) if missing else plan

    def new_result(self) -> RunResult:
        p = self.prepared
        return RunResult(
            study=p.study,
            study_id=p.study_id,
            evaluated=0,
            duplicates=0,
            retried=0,
            total=p.store.count(p.study_id),
            front=[],
            timings=self.timings,
            base_accuracy=p.base_accuracy,
            base_cost=p.base_cost.as_dict(),
        )

    def conclude(self, res: RunResult) -> RunResult:
        """The run's front and count, after the re-scoring rung (:mod:`search.study._rescore`) if asked;
        trials orphaned by workers killed since the run began are failed."""
        from search.study._remeasure import remeasure_front
        from search.study._rescore import rescore

        p = self.prepared
        res.events += rescore(p, on_time=res.on_time)
        res.events += remeasure_front(p, on_time=res.on_time)
        self.fail_orphan_trials()
        res.front = p.store.front(p.study_id)
        res.total = p.store.count(p.study_id)
        if res.on_time or res.total >= self.cfg.search.candidates:  # a study completed later loses the old line
            p.store.set_stopped(p.study_id, res.stopped if res.on_time else None)
        return res

    def out_of_time(self, res: RunResult) -> bool:
        """Whether the run's time limit leaves no room for another candidate (``res.stopped`` then says so)."""
        p = self.prepared
        if self.deadline is None or p.store.count(p.study_id) >= self.cfg.search.candidates:
            return False  # a full study ends as full, never "on time"
        why = self.deadline.admits(p)
        if why is not None:
            res.stopped, res.on_time = why, True
        return why is not None

    def propose(self, seeds: list[tuple[CandidateKind, Plan, float]]) -> Proposal:
        """Sample (or take the next of ``seeds``) and repair onto the sampled cost level: a plan within the budget."""
        from search.sampling._params import LEVEL

        p, teller, _ = self._parts()
        t0 = time.perf_counter()
        trial: Trial | None = None
        if seeds:
            kind, plan, level = seeds.pop(0)
            params = params_from_plan(p.space, plan, p.dists, p.space_options, level=level)
            t1 = time.perf_counter()
        else:
            kind = CandidateKind.SAMPLED
            trial = teller.study.ask(p.dists)
            trial.set_user_attr("worker", self.worker)
            params = trial.params
            plan = plan_from_params(p.space, params, p.space_options)
            t1 = time.perf_counter()
            plan = p.space.fit(plan, p.budget.scaled(float(params.get(LEVEL, 1.0))))
        cost = p.space.cost(plan)
        slack = p.budget.slack(cost, p.base_cost)
        if any(v > 0 for v in slack.values()):  # fit guarantees this never happens
            raise RuntimeError(f"internal error: repaired plan {plan.hash} exceeds the budget: {slack}")
        if trial is not None:
            for key, value in slack.items():
                trial.set_constraint(key, value)
            trial.set_user_attr("plan_hash", plan.hash)
        self.timings.sample += t1 - t0
        self.timings.repair += time.perf_counter() - t1
        return Proposal(kind=kind, plan=plan, cost=cost, params=params, trial=trial)

    def reserve(self, prop: Proposal, res: RunResult) -> int | None:
        """The new candidate's id, or ``None``: a duplicate (told to Optuna), or the space is exhausted
        (``res.stopped`` says so). Raises :class:`storage.StudyFullError` when the study holds its candidates.
        """
        from storage import StudyFullError

        _, teller, runner = self._parts()
        try:
            cid = runner.reserve(prop.plan, prop.trial_number, kind=prop.kind)
        except StudyFullError:
            if prop.trial is not None:
                prop.trial.set_user_attr("reason", "not evaluated: the study already holds its candidates")
                teller.tell(prop.trial.number, None, Status.FAIL)
            raise
        if cid is not None:
            self._in_a_row = 0
            return cid
        if prop.trial is not None:  # a sampled duplicate (a seed plan already evaluated is skipped silently)
            res.duplicates += 1
            self._in_a_row += 1
            teller.tell_duplicate(prop.trial, prop.plan.hash)
            if self._in_a_row >= _MAX_DUPLICATES_IN_A_ROW:
                res.stopped = (
                    f"the sampler proposed {self._in_a_row} plans in a row that the study already holds: "
                    "the space looks exhausted at this budget"
                )
        return None

    def claim_stale(self, res: RunResult, *, orphans: bool = False) -> list[CandidateRow]:
        """Claim the candidates that stopped workers left RUNNING (their old Optuna trials are failed).

        With ``orphans``, also fail the Optuna trials that dead workers of this
        host asked for and never reserved. Evaluate each row with :meth:`relive`.
        """
        from optuna.trial import TrialState

        p, teller, _ = self._parts()
        study = teller.study
        rows = p.store.claim_stale(
            p.study_id, self.worker, grace_seconds=self.cfg.storage.grace_seconds, is_dead=is_dead
        )
        for row in rows:
            res.events.append(f"candidate {row.id} ({row.error}): evaluating it again")
            if row.trial_number is not None:
                trials = study.get_trials(deepcopy=False)
                if row.trial_number < len(trials) and trials[row.trial_number].state == TrialState.RUNNING:
                    study.tell(row.trial_number, state=TrialState.FAIL)
        res.retried += len(rows)
        if orphans or rows:
            self.fail_orphan_trials()
        return rows

    def fail_orphan_trials(self) -> int:
        """Fail the Optuna trials that dead workers asked for and never reserved; returns how many.

        A trial names its worker right after it is asked; one killed in between
        leaves a trial with no worker, failed once it is older than
        :data:`_UNNAMED_GRACE_S` (a live worker names its own within
        milliseconds, and its later result is told with ``skip_if_finished``).
        """
        from optuna.trial import TrialState

        failed = 0
        now = datetime.now()  # Optuna stamps trials with the local naive time
        for t in self.teller.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("worker")
            unnamed_for = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if (owner and is_dead(owner)) or (not owner and unnamed_for > _UNNAMED_GRACE_S):
                self.teller.study.tell(t.number, state=TrialState.FAIL)
                failed += 1
        return failed

    def relive(self, row: CandidateRow) -> tuple[Plan, Cost, Recorder]:
        """What :meth:`CandidateRunner.evaluate` needs to evaluate a claimed candidate again."""
        from spaces import Plan

        p, teller, _ = self._parts()
        plan = Plan.from_json(row.plan)
        cost = p.space.cost(plan)
        level = level_of(cost, p.budget, p.base_cost)
        params = params_from_plan(p.space, plan, p.dists, p.space_options, level=level)
        return plan, cost, teller.recorder(None, params, row.id, plan.hash, CandidateKind.RETRY)

    # ------------------------------------------------------------------ the drivers
    def run(self, on_candidate: Callable[[RunResult], None] | None = None) -> RunResult:
        """Evaluate candidates until the study holds ``search.candidates`` of them (by ``search.backend``'s driver).

        Prepares the study first if :meth:`prepare` was not called.
        """
        if self._prepared is None:
            self.prepare()
        with safe_points():  # the candidate loop checks the stop flag; the preparation above stops at once
            return driver(self.cfg.search.backend).run(self, on_candidate)

    @property
    def runner(self) -> CandidateRunner:
        """Lives candidates in this process (see :mod:`search.study._candidate`)."""
        return self._parts()[2]
