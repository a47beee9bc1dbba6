"""The local search driver: an Optuna ask/tell study over our plans, stored in one SQL database.

One worker (one process) runs :meth:`Search.run`; several workers may run the
same study against one PostgreSQL URL. Per candidate:

1. **sample**: the sampler proposes per-group prune ratios (and ranks), or the
   next seed plan (the allocator's, then the uniform one) is taken first;
2. **repair**: ``space.fit`` moves the plan onto the budget, so every candidate
   that is evaluated and stored meets it; the budget's slack goes to Optuna as
   ``trial.set_constraint`` values (always <= 0 after repair);
3. **reserve**: the plan enters the store as RUNNING under this worker, unless
   the same plan (hash) is already there: then it is not evaluated again (the
   sampler is told the stored result), or the study is full;
4. **apply + evaluate**: BN recalibration, quick fine-tune (KD optional) with the
   early-stop rule of :mod:`search._early_stop`, accuracy, latency if asked;
5. **store**: the fine-tuned weights go to ``artifacts/studies/<study>/<id>.safetensors``,
   Optuna is told, and the candidate row plus the Pareto table are written in
   one transaction.

A killed worker leaves at most its current candidate RUNNING; the next worker
(or a rerun of the same command) claims it (``StudyStore.claim_stale``), fails
its old Optuna trial and evaluates the plan again. The study is done when it
holds ``search.candidates`` candidates, counted over all workers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search._config import Config
from search._early_stop import EarlyStop
from search._space import distributions, params_from_plan, plan_from_params

__all__ = ["RunResult", "Search", "Timings", "worker_id"]

log = logging.getLogger("prunetune")

SAMPLERS = ("tpe", "nsga2", "random")
_MAX_DUPLICATES_IN_A_ROW = 50


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead(owner: str | None) -> bool:
    """True when ``owner`` ("host:pid") is a process of this host that no longer runs."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only its heartbeat can tell
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _trial_state(status: str) -> Any:
    """Our candidate status as Optuna's ``TrialState``."""
    from optuna.trial import TrialState

    return {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[status]


def make_sampler(name: str, seed: int, candidates: int) -> Any:
    """``tpe`` (default), ``nsga2`` or ``random``; a clear error lists them otherwise.

    TPE is the default: with a few dozen candidates it starts modelling after
    ``min(10, candidates // 3)`` random ones, handles several objectives
    (MOTPE) and, with ``constant_liar``, does not hand parallel workers the same
    region. NSGA-II needs several generations of ``population_size`` (here
    ``max(4, candidates // 4)``) before it improves on random search.
    """
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, min(10, candidates // 3)), multivariate=True, constant_liar=True
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, candidates // 4))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


@dataclass
class Timings:
    """Seconds this worker spent per phase, summed over candidates."""

    sample: float = 0.0
    repair: float = 0.0
    apply: float = 0.0
    evaluate: float = 0.0
    store: float = 0.0
    candidates: int = 0

    def per_candidate(self) -> dict[str, float]:
        n = max(self.candidates, 1)
        return {k: getattr(self, k) / n for k in ("sample", "repair", "apply", "evaluate", "store")}


@dataclass
class RunResult:
    study: str
    study_id: int
    evaluated: int  # candidates this worker evaluated
    duplicates: int  # sampled plans already in the study
    retried: int  # candidates of stopped workers evaluated again
    total: int  # candidates in the study
    front: list[Any]
    timings: Timings
    base_accuracy: float | None
    base_cost: dict[str, Any]
    stopped: str | None = None  # why the loop ended early, if it did
    events: list[str] = field(default_factory=list)


class _Heartbeat:
    """Renews a RUNNING candidate's heartbeat from a daemon thread."""

    def __init__(self, store: Any, candidate_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, candidate_id, interval), daemon=True)

    def _run(self, store: Any, cid: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                store.heartbeat(cid)
            except Exception as exc:  # a lost heartbeat must not kill the evaluation
                log.warning("heartbeat of candidate %s failed: %s", cid, exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Search:
    """A study run by this process. ``prepare`` validates everything before any write; ``run`` evaluates.

    Bad input (unknown spec, infeasible budget, unreachable or malformed storage,
    a reused study name with another model, data or budget, other objectives)
    raises a one-line ``ValueError``/``PruneTuneError`` and leaves an existing
    study untouched.
    """

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.worker = worker_id()
        self.timings = Timings()
        self._prepared = False

    # ------------------------------------------------------------------ setup
    def prepare(self, *, progress: bool = False) -> Search:
        import optuna
        import torch

        from evaluators import Context as EvalContext
        from evaluators import Recipe, build_model, evaluate_accuracy, load_data, load_weights, resolve_device
        from evaluators._train import train_baseline
        from spaces import Budget, ModelSpace
        from storage import StudyStore

        cfg = self.cfg
        make_sampler(cfg.search.sampler, 0, cfg.search.candidates)  # validates the name first
        if cfg.evaluate.threads is not None:
            torch.set_num_threads(cfg.evaluate.threads)
        self.budget = Budget.from_dict(cfg.budget_dict())
        self.store = StudyStore(cfg.storage.url)  # malformed / unreachable URL: fails before any work
        self.device = resolve_device(cfg.evaluate.device)
        self.data = load_data(cfg.data.spec, data_dir=cfg.data.data_dir, seed=cfg.data.seed)
        if cfg.model.weights:
            model = build_model(cfg.model.spec, in_channels=self.data.in_channels, num_classes=self.data.num_classes)
            load_weights(model, cfg.model.weights)
            ctx = EvalContext(data=self.data, device=self.device, batch_size=cfg.evaluate.batch_size)
            self.base_accuracy, _ = evaluate_accuracy(model.to(self.device), ctx)
        else:
            recipe = Recipe(epochs=cfg.model.train_epochs, lr=cfg.model.train_lr, batch_size=cfg.model.train_batch_size)
            base = train_baseline(
                cfg.model.spec,
                self.data,
                recipe=recipe,
                seed=cfg.model.train_seed,
                artifacts_dir=cfg.search.artifacts_dir,
                device=self.device,
                progress=progress,
            )
            model, self.base_accuracy = base.model, base.accuracy
        self.base_model = model.eval()
        self.space = ModelSpace(
            model.cpu(),
            self.data.example_inputs(1),
            importance=cfg.space.importance,
            round_to=cfg.space.round_to,
            ignored_layers=cfg.space.ignored_layers,
        )
        self.base_model.to(self.device)
        self.base_cost = self.space.base_cost
        self.uniform = self.space.fit(self.space.uniform_plan(0.0), self.budget)  # infeasible budget: raises here
        self.dists = distributions(
            self.space, max_ratio=cfg.space.max_ratio, rank=cfg.space.rank, method=cfg.space.method
        )
        name = cfg.search.study
        assert name is not None  # load_config sets it
        self.study_id = self.store.ensure_study(
            name,
            model_spec=cfg.model.spec,
            data_spec=self.data.spec,
            budget=self.budget.to_dict(),
            space_options={
                **cfg.space.model_dump(),
                "input_shape": list(self.data.input_shape),
                "in_channels": self.data.in_channels,
                "num_classes": self.data.num_classes,
            },
            base_cost=self.base_cost.as_dict(),
            base_accuracy=self.base_accuracy,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.objectives = list(cfg.search.objectives)
        directions: list[Any] = ["maximize"] + ["minimize"] * (len(self.objectives) - 1)
        storage = self._optuna_storage()
        existing = [s for s in storage.get_all_studies() if s.study_name == name]
        if existing:
            had = existing[0].user_attrs.get("prunetune_objectives")
            same_dirs = [d.name.lower() for d in existing[0].directions] == directions
            if (had is not None and had != self.objectives) or not same_dirs:
                raise ValueError(
                    f"study {name!r} exists with objectives {had}, not {self.objectives}: use another study name"
                )
        # a rerun continues with a fresh stream (resampling the same plans would only find duplicates)
        seed = cfg.search.seed + 1_000_003 * cfg.search.worker + 7919 * self.store.count(self.study_id)
        self.study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=directions,
            sampler=make_sampler(cfg.search.sampler, seed, cfg.search.candidates),
            load_if_exists=True,
        )
        if not existing or existing[0].user_attrs.get("prunetune_objectives") is None:
            self.study.set_user_attr("prunetune_objectives", self.objectives)
        self.evaluator = self._evaluator()
        self.artifacts = Path(cfg.search.artifacts_dir) / "studies" / name
        self._prepared = True
        torch.manual_seed(cfg.evaluate.seed)
        return self

    def _optuna_storage(self) -> Any:
        import optuna

        url = self.store.sqlalchemy_url
        if url.startswith("sqlite"):
            kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
        else:
            kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        from sqlalchemy.exc import IntegrityError, ProgrammingError

        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            except (IntegrityError, ProgrammingError):  # workers racing to create Optuna's tables
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _evaluator(self) -> Any:
        from evaluators import Accuracy, BNRecalibration, FineTune, Latency, Pipeline

        e = self.cfg.evaluate
        steps: list[Any] = [
            BNRecalibration(e.bn_batches),
            FineTune(steps=e.finetune_steps, lr=e.lr, kd_weight=e.kd_weight, eval_every=e.eval_every),
            Accuracy(),
        ]
        if e.latency or "latency" in self.cfg.search.objectives:
            steps.append(Latency(batch_sizes=(1,), runs=20, warmup=5))
        return Pipeline(steps)

    # ------------------------------------------------------------------ the loop
    def seed_plans(self) -> list[tuple[str, Any]]:
        out = []
        for kind in self.cfg.search.seed_plans:
            if kind == "allocator":
                plan = self.space.allocate(self.budget, prune=True, rank=self.cfg.space.rank)
                out.append(("allocator", self.space.fit(plan, self.budget)))
            else:
                out.append(("uniform", self.uniform))
        return out

    def run(self, on_candidate: Callable[[RunResult], None] | None = None) -> RunResult:
        """Evaluate candidates until the study holds ``search.candidates`` of them."""
        if not self._prepared:
            self.prepare()
        from storage import StudyFullError

        cfg = self.cfg
        target = cfg.search.candidates
        res = RunResult(
            cfg.search.study or "", self.study_id, 0, 0, 0, 0, [], self.timings, self.base_accuracy,
            self.base_cost.as_dict(),
        )  # fmt: skip
        seeds = self.seed_plans()
        in_a_row, first = 0, True
        while True:
            res.retried += self._retry_stale(res, orphans=first)
            first = False
            res.total = self.store.count(self.study_id)
            if res.total >= target:
                break
            t0 = time.perf_counter()
            trial = None
            if seeds:
                kind, plan = seeds.pop(0)
                params = params_from_plan(self.space, plan, self.dists, method=cfg.space.method)
                t1 = time.perf_counter()
            else:
                kind = "sampled"
                trial = self.study.ask(self.dists)
                trial.set_user_attr("worker", self.worker)
                params = trial.params
                plan = plan_from_params(self.space, params, method=cfg.space.method)
                t1 = time.perf_counter()
                plan = self.space.fit(plan, self.budget)
            cost = self.space.cost(plan)
            slack = self.budget.slack(cost, self.base_cost)
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
                cid = self.store.reserve(
                    self.study_id, plan.to_json(), plan.hash, trial.number if trial else None,
                    worker=self.worker, limit=target,
                )  # fmt: skip
            except StudyFullError:
                if trial is not None:
                    trial.set_user_attr("reason", "not evaluated: the study already holds its candidates")
                    self._tell(trial, None, "FAIL")
                break
            self.timings.store += time.perf_counter() - t2
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
            self._evaluate(cid, plan, cost, params, trial, kind)
            res.evaluated += 1
            res.total = self.store.count(self.study_id)
            if on_candidate is not None:
                on_candidate(res)
        res.front = self.store.front(self.study_id)
        res.total = self.store.count(self.study_id)
        return res

    def _values(self, accuracy: float, cost: dict[str, float], latency: float | None) -> list[float]:
        out = []
        for obj in self.objectives:
            if obj == "accuracy":
                out.append(accuracy)
            elif obj == "latency":
                out.append(float(latency) if latency is not None else float("nan"))
            else:
                out.append(float(cost[obj]))
        return out

    def _tell(self, trial: Any, values: list[float] | None, status: str) -> None:
        if values is not None and status == "COMPLETE":
            self.study.tell(trial, values)
        else:
            self.study.tell(trial, state=_trial_state(status))

    def _tell_duplicate(self, trial: Any, plan_hash: str) -> None:
        row = self.store.candidate(self.study_id, plan_hash=plan_hash)
        trial.set_user_attr("duplicate_of", row.id)
        if row.status == "COMPLETE" and row.accuracy is not None:
            cost = {"macs": row.macs or 0.0, "params": row.params or 0.0, "bytes": row.bytes or 0.0}
            self._tell(trial, self._values(row.accuracy, cost, row.latency), "COMPLETE")
        else:
            self._tell(trial, None, "PRUNED" if row.status == "PRUNED" else "FAIL")

    def _early_stop(self, cost: Any) -> EarlyStop | None:
        e = self.cfg.evaluate
        if not (e.early_stop and e.eval_every):
            return None
        names = [o for o in self.objectives if o in ("macs", "params", "bytes")]
        rule = EarlyStop([getattr(cost, n) for n in names], e.early_stop_margin)
        for row in self.store.candidates(self.study_id, status="COMPLETE"):
            rule.add([row.objective(n) for n in names], row.history)
        return rule

    def _evaluate(self, cid: int, plan: Any, cost: Any, params: dict[str, Any], trial: Any, kind: str) -> None:
        from evaluators import Context

        e = self.cfg.evaluate
        rule = self._early_stop(cost)
        t0 = time.perf_counter()
        with _Heartbeat(self.store, cid, min(30.0, self.cfg.storage.grace_seconds / 4)):
            model = self.space.apply(plan)
            t1 = time.perf_counter()
            context = Context(
                data=self.data,
                teacher=self.base_model if e.kd_weight > 0 else None,
                device=self.device,
                seed=e.seed,
                batch_size=e.batch_size,
                max_val_samples=e.max_val_samples,
                callback=rule,
            )
            try:
                metrics = self.evaluator.evaluate(model, context)
            except (ValueError, RuntimeError) as exc:  # e.g. a shape error the space did not foresee
                from evaluators import Metrics

                metrics = Metrics(status="FAIL", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
            t2 = time.perf_counter()
            artifact = None
            if metrics.status == "COMPLETE":
                artifact = self._save_weights(cid, model)
        status = metrics.status
        reason = rule.reason if status == "PRUNED" and rule is not None and rule.reason else metrics.reason
        latency = next(iter(metrics.latency_ms.values()), None) if metrics.latency_ms else None
        cdict = cost.as_dict()
        if status == "COMPLETE" and metrics.accuracy is not None:
            values: list[float] | None = self._values(metrics.accuracy, cdict, latency)
        else:
            values = None
        number = self._record_trial(trial, params, values, status, cid, plan.hash, kind)
        self.store.finish(
            cid,
            status,
            accuracy=metrics.accuracy
            if status == "COMPLETE"
            else (metrics.history[-1][1] if metrics.history else None),
            cost=cdict,
            latency_ms=metrics.latency_ms or None,
            seconds=t2 - t0,
            error=reason,
            history=metrics.history,
            artifact=artifact,
            trial_number=number,
            objectives=self.objectives,
        )
        self.timings.apply += t1 - t0
        self.timings.evaluate += t2 - t1
        self.timings.store += time.perf_counter() - t2
        self.timings.candidates += 1

    def _record_trial(
        self, trial: Any, params: dict[str, Any], values: list[float] | None, status: str, cid: int, h: str, kind: str
    ) -> int | None:
        """Tell Optuna: the asked trial, or (seed plans, retries) a trial added with the same params."""
        if trial is not None:
            self._tell(trial, values, status)
            return int(trial.number)
        import optuna

        frozen = optuna.trial.create_trial(
            state=_trial_state(status),
            params=params,
            distributions=self.dists,
            values=values if status == "COMPLETE" else None,
            user_attrs={"candidate_id": cid, "plan_hash": h, "kind": kind, "worker": self.worker},
        )
        self.study.add_trial(frozen)
        for t in reversed(self.study.get_trials(deepcopy=False)):
            if t.user_attrs.get("candidate_id") == cid:
                return int(t.number)
        return None

    def _save_weights(self, cid: int, model: Any) -> str:
        from safetensors.torch import save_file

        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{cid}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
        return str(path.resolve())

    def _retry_stale(self, res: RunResult, *, orphans: bool = False) -> int:
        """Claim and evaluate again the candidates that stopped workers left RUNNING."""
        from optuna.trial import TrialState

        from spaces import Plan

        rows = self.store.claim_stale(
            self.study_id, self.worker, grace_seconds=self.cfg.storage.grace_seconds, is_dead=_is_dead
        )
        for row in rows:
            res.events.append(f"candidate {row.id} ({row.error}): evaluating it again")
            if row.trial_number is not None:
                trials = self.study.get_trials(deepcopy=False)
                if row.trial_number < len(trials) and trials[row.trial_number].state == TrialState.RUNNING:
                    self.study.tell(row.trial_number, state=TrialState.FAIL)
            plan = Plan.from_json(row.plan)
            params = params_from_plan(self.space, plan, self.dists, method=self.cfg.space.method)
            self._evaluate(row.id, plan, self.space.cost(plan), params, None, "retry")
        if not (orphans or rows):
            return 0
        # Optuna trials asked by dead workers of this host that never reached the store
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _is_dead(t.user_attrs.get("worker")) and t.user_attrs.get("worker"):
                self.study.tell(t.number, state=TrialState.FAIL)
        return len(rows)
