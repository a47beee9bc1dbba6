"""The Ray driver (``search.backend = "ray"``): Ray Tune schedules the candidates; the store decides.

A Ray Tune ``Tuner`` runs one trial per candidate on the cluster, with
``ray.cpus_per_candidate`` / ``ray.gpus_per_candidate`` each and at most
``ray.max_concurrent`` at once. Everything else is the local driver's
(:class:`search.study._study.Search`), so a Ray study and a local study are the same
rows in the same store and either may continue the other:

* **sampling, repair, de-duplication** happen in this process, in
  :class:`CandidateSearcher` (a ``ray.tune.search.Searcher``): its ``suggest``
  claims stale candidates first (evaluated again, as the local driver does),
  then asks our Optuna study for a plan (seed plans first), repairs it and
  reserves it in the store by plan hash. A duplicate is told to Optuna and never
  becomes a trial; a full study is Tune's ``FINISHED``. The trial's config is
  just the candidate's id, its Optuna trial number and how it was proposed.
* **one candidate's life** runs in the trial, on whichever node Tune picked:
  :func:`_candidate_trial` hands the stored plan to a
  :class:`search.study._candidate.CandidateRunner` (apply, evaluate, record: the row
  and the front are written in one transaction, then Optuna is told by a
  :class:`search.study._study.Teller` there), reporting each intermediate accuracy with
  ``tune.report``. The prepared study (base model, space, data, evaluator) is
  shipped once per run through the object store and unpickled once per actor
  process (trials reuse actors).

Why not Ray Tune's ``OptunaSearch``: it keeps its own Optuna study and tells it
from ``on_trial_complete``, in the driver, after the fact. Restored from Tune's
experiment snapshot, it replays trials at least once, so Optuna's and Tune's
trial counts drift apart and candidates finished after the last snapshot are
evaluated again. Here the store is the single source of truth: the searcher's
``on_trial_complete`` records nothing the trial has not already recorded (only
the failure of a trial Tune gave up on), Tune's snapshots are never restored (a
killed driver is resumed by running the same command again: the candidates it
left RUNNING are claimed from the store), and ``StudyStore.finish`` records a
candidate once however often Tune runs it (``FailureConfig`` retries a trial
whose node died; a retry finds the row finished and only reports it).

The candidates this driver reserves are owned by it (``host:pid``), and the
trial evaluating a candidate renews its heartbeat for workers on other hosts.
Ray ends a dead driver's trials, but not at once: a trial of a SIGKILLed driver
may still finish its candidate while a rerun has claimed it and evaluates it
again. Whichever finishes first records it and tells Optuna; the other writes
nothing (each evaluation has its own weights file).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ray import tune
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from search.drivers._base import Driver
from search.study._candidate import CandidateRunner, Timings, worker_id
from spaces import CandidateKind, Status, check_interrupt, interrupt_requested, reinstall_handlers

if TYPE_CHECKING:
    from search._config import RayConfig
    from search.preparation._prepare import Prepared
    from search.study._study import RunResult, Search, Teller
    from storage import CandidateRow

__all__ = ["CandidateSearcher", "RayDriver", "StoreSearcher", "capacity", "connect", "run_on_ray"]

log = logging.getLogger("prunetune")

_FINISHED: Any = Searcher.FINISHED  # what suggest returns when the study is full (typed Optional[Dict] by Ray)
_NOT_FROM_SNAPSHOT = "resume a PruneTune study by running the same command again, not from Ray Tune's snapshot"


class TrialConfig(TypedDict):
    """A Tune trial's config: the reserved candidate, its Optuna trial (None: seed or retry), its kind."""

    cid: int
    trial: int | None
    kind: str  # a CandidateKind value (Tune keeps configs as plain JSON)


class TrialResult(TypedDict, total=False):
    """What a trial reports to Tune: intermediate accuracies (``final`` False), then its outcome."""

    cid: int
    step: int
    accuracy: float | None
    final: bool
    status: str
    evaluated: int  # 1 when this run of the trial evaluated the candidate, 0 when it was already recorded
    recorded: int  # 1 when this run recorded it (a retry finds it recorded: 0)
    worker: str
    started: float  # wall clock of the trial's node
    ended: float
    seconds_apply: float
    seconds_evaluate: float
    seconds_store: float


# ---------------------------------------------------------------------- connecting
def _address(cfg: RayConfig) -> tuple[str | None, str]:
    """The cluster address (``ray.address``, else ``$RAY_ADDRESS``, else ``None``: a new local Ray) and its source."""
    if cfg.address:
        return cfg.address, "ray.address"
    env = os.environ.get("RAY_ADDRESS")
    return (env, "$RAY_ADDRESS") if env else (None, "")


def _probe(address: str, source: str) -> None:
    """Fail fast, in one line, when nothing listens at ``address`` (``ray.init`` would retry for a minute)."""
    if address.startswith("ray://"):
        raise ValueError(
            f"{source}={address!r} is a Ray Client address, where Tune would run the study away from this "
            "process: run prunetune on a node of the cluster (e.g. `ray job submit -- prunetune run ...`) "
            "with the cluster's HOST:PORT (6379 by default)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{source} must look like HOST:PORT (the head's GCS address), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {source}={address!r}: {exc.strerror or exc}") from None


def connect(cfg: RayConfig) -> bool:
    """Connect this process to the Ray cluster of a study's ``[ray]`` section; ``True`` when it started Ray
    (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address, source = _address(cfg)
    if address is not None and address not in ("auto", "local"):
        _probe(address, source)
    node_ip = cfg.node_ip or os.environ.get("PRUNETUNE_RAY_NODE_IP") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if node_ip:
        kwargs["_node_ip_address"] = node_ip
    if address is None:  # a new local Ray
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        where = f"{source}={address!r}" if address else "a new local Ray"
        raise ValueError(f"cannot connect to the Ray cluster at {where}: {str(exc).splitlines()[0]}") from None
    reinstall_handlers()  # ray.init replaced our SIGTERM handler with one that exits 1 at once
    return True


def capacity(rc: RayConfig) -> int:
    """``ray.max_concurrent``, else how many candidates the cluster's resources hold at once."""
    import ray

    if rc.max_concurrent is not None:
        return rc.max_concurrent  # trusted as given (an autoscaling cluster may grow into it)
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // rc.cpus_per_candidate)]
    if rc.gpus_per_candidate > 0:
        fits.append(int(total.get("GPU", 0) // rc.gpus_per_candidate))
    if min(fits) < 1:
        have = f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"
        raise ValueError(
            f"the Ray cluster has {have}: not enough for one candidate with ray.cpus_per_candidate="
            f"{rc.cpus_per_candidate:g} and ray.gpus_per_candidate={rc.gpus_per_candidate:g}"
        )
    return min(fits)


# ---------------------------------------------------------------------- the trial (on a cluster node)
@dataclass(frozen=True)
class _Shipment:
    """The prepared study, pickled once by the driver; ``token`` names the run so actors unpickle it once."""

    token: str
    payload: bytes


class _TrialWorker:
    """What a trial process needs to live candidates: the prepared study, its Optuna twin, a runner."""

    _cache: dict[str, _TrialWorker] = {}  # noqa: RUF012 (one per process: actors are reused across trials)

    def __init__(self, prepared: Prepared) -> None:
        import optuna
        import torch

        from evaluators import resolve_device
        from search.study._study import Teller

        cfg = prepared.config
        device = resolve_device(cfg.evaluate.device)  # this node's, not the driver's
        torch.set_num_threads(cfg.evaluate.threads or max(1, int(cfg.ray.cpus_per_candidate)))
        torch.manual_seed(cfg.evaluate.seed)
        self.prepared = p = replace(prepared, device=device, base_model=prepared.base_model.to(device))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(
            study_name=p.study,
            storage=p.store.optuna_storage(),
            sampler=optuna.samplers.RandomSampler(),  # a trial only tells: the driver's sampler asks
        )
        self.worker = worker_id()
        self.teller: Teller = Teller(study, p, self.worker)
        self.timings = Timings()
        self.runner = CandidateRunner(p, self.worker, self.timings)

    @classmethod
    def get(cls, shipment: _Shipment) -> _TrialWorker:
        got = cls._cache.get(shipment.token)
        if got is None:
            from ray import cloudpickle

            cls._cache.clear()
            got = cls._cache[shipment.token] = cls(cloudpickle.loads(shipment.payload))
        return got

    def live(self, cid: int, trial: int | None, kind: CandidateKind) -> TrialResult:
        """Evaluate and record candidate ``cid`` (unless it is already finished); its final result for Tune."""
        from search.sampling._params import level_of, params_from_plan
        from spaces import Plan

        p = self.prepared
        start = time.time()
        row = p.store.candidate(p.study_id, id=cid)
        if Status(row.status).finished:  # an earlier run of this trial recorded it: report, never record twice
            return {"cid": cid, "status": str(row.status), "accuracy": row.accuracy, "evaluated": 0, "final": True}
        plan = Plan.from_json(row.plan)
        level = level_of(p.space.cost(plan), p.budget, p.base_cost)
        params = params_from_plan(p.space, plan, p.dists, p.space_options, level=level) if trial is None else {}
        before = Timings(**{k: getattr(self.timings, k) for k in ("apply", "evaluate", "store")})

        def report(step: int, accuracy: float) -> None:
            tune.report({"cid": cid, "step": step, "accuracy": accuracy, "final": False})

        recorder = self.teller.recorder(trial, params, cid, plan.hash, kind)
        out = self.runner.evaluate(cid, plan, p.space.cost(plan), recorder, report=report)
        return {
            "cid": cid,
            "status": out.status.value,
            "accuracy": out.metrics.accuracy,
            "evaluated": 1,
            "recorded": int(out.recorded),
            "final": True,
            "worker": self.worker,
            "started": start,  # wall clock of this node: the driver measures the gap to this slot's previous end
            "ended": time.time(),
            "seconds_apply": self.timings.apply - before.apply,
            "seconds_evaluate": self.timings.evaluate - before.evaluate,
            "seconds_store": self.timings.store - before.store,
        }


def _candidate_trial(config: TrialConfig, shipment: _Shipment) -> None:
    """A Tune trial: one candidate's life (see :meth:`_TrialWorker.live`)."""
    trial = config.get("trial")
    tune.report(
        _TrialWorker.get(shipment).live(
            int(config["cid"]), None if trial is None else int(trial), CandidateKind(config["kind"])
        )
    )


# ---------------------------------------------------------------------- the driver's side
class StoreSearcher(Searcher):
    """A ``Searcher`` whose state is the study store: it remembers each live trial's config only to record the
    failure of one Tune gave up on (:meth:`record_failure`), saves nothing, refuses Tune's snapshots, and an
    unpickled copy proposes nothing. The vision and the language-model searchers are two of these."""

    def __init__(self, max_failures: int) -> None:
        super().__init__()
        self.max_failures = max_failures
        self.finished = False
        self.trials: dict[str, Any] = {}  # Tune trial id -> its config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        config = self.trials.pop(trial_id, None)
        if config is None or not error:
            return  # the trial recorded its candidate
        self.record_failure(config, f"Ray Tune gave up on its trial after {self.max_failures} retries")

    def record_failure(self, config: Any, reason: str) -> None:
        """Record FAIL for the candidate of ``config`` if its trial never recorded it."""
        raise NotImplementedError

    def save(self, checkpoint_path: str) -> None:
        """Nothing: the store is the state (see the module docs)."""

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError(_NOT_FROM_SNAPSHOT)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Tune pickles its config into its snapshot; ours is in the store

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.finished = True  # an unpickled searcher proposes nothing


class CandidateSearcher(StoreSearcher):
    """Proposes candidates to Ray Tune from our Optuna study; the store records them (see the module docs).

    ``suggest`` claims, samples, repairs and reserves (a trial's config names a
    reserved candidate); ``on_trial_complete`` only records the failure of a trial
    Tune gave up on; ``save``/``restore`` keep nothing: the store is the state.
    """

    def __init__(self, search: Search, res: RunResult) -> None:
        super().__init__(search.cfg.ray.max_failures)
        self.search = search
        self.res = res
        self.seeds = search.seed_plans()
        self._first = True
        self._retries: list[CandidateRow] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # a TrialConfig (Ray types it as a plain dict)
        from storage import StudyFullError

        if self.finished:
            return _FINISHED
        if interrupt_requested() is not None:
            return None  # nothing new: _StopOnSignal ends the run
        s, res = self.search, self.res
        p = s.prepared
        if s.out_of_time(res):  # search.time: Tune finishes the running trials, then the run concludes
            self.finished = True
            return _FINISHED
        self._retries += s.claim_stale(res, orphans=self._first)
        self._first = False
        if self._retries:
            return dict(self._trial(trial_id, self._retries.pop(0).id, None, CandidateKind.RETRY))
        while p.store.count(p.study_id) < s.cfg.search.candidates:
            prop = s.propose(self.seeds)
            try:
                cid = s.reserve(prop, res)
            except StudyFullError:
                break
            if cid is not None:
                return dict(self._trial(trial_id, cid, prop.trial_number, prop.kind))
            if res.stopped:
                break
        self.finished = True
        return _FINISHED

    def _trial(self, trial_id: str, cid: int, number: int | None, kind: CandidateKind) -> TrialConfig:
        config: TrialConfig = {"cid": cid, "trial": number, "kind": kind.value}
        self.trials[trial_id] = config
        return config

    def record_failure(self, config: TrialConfig, reason: str) -> None:
        """Record FAIL for a candidate whose trial never recorded it (its retries were spent)."""
        from search.sampling._params import level_of, params_from_plan
        from spaces import Plan

        s = self.search
        p = s.prepared
        row = p.store.candidate(p.study_id, id=config["cid"])
        if row.status is not Status.RUNNING or row.worker != s.worker:
            return  # recorded after all, or claimed by another worker
        plan = Plan.from_json(row.plan)
        number = config["trial"]
        level = level_of(p.space.cost(plan), p.budget, p.base_cost)
        params = params_from_plan(p.space, plan, p.dists, p.space_options, level=level) if number is None else {}
        if not p.store.finish(row.id, Status.FAIL, error=reason, objectives=p.objectives):
            return  # recorded by another worker in the meantime
        got = s.teller.recorder(number, params, row.id, plan.hash, CandidateKind(config["kind"]))(Status.FAIL, None)
        if got is not None:
            p.store.set_trial_number(row.id, got)
        self.res.events.append(f"candidate {row.id}: {reason}; recorded as FAIL")


class _Progress(tune.Callback):
    """Driver-side bookkeeping of trial results: counts, timings, events, the caller's progress hook."""

    def __init__(self, search: Search, res: RunResult, on_candidate: Callable[[RunResult], None] | None) -> None:
        self.search, self.res, self.on_candidate = search, res, on_candidate
        self._ended: dict[str, float] = {}  # trial process -> when its last candidate ended

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        if not result.get("final"):
            return
        res, t = self.res, self.search.timings
        res.evaluated += int(result.get("evaluated", 0))
        t.apply += float(result.get("seconds_apply", 0.0))
        t.evaluate += float(result.get("seconds_evaluate", 0.0))
        t.store += float(result.get("seconds_store", 0.0))
        t.candidates += int(result.get("evaluated", 0))
        if result.get("evaluated"):
            worker = str(result.get("worker"))
            if worker in self._ended:
                t.schedule += float(result["started"]) - self._ended[worker]
                t.scheduled += 1
            self._ended[worker] = float(result["ended"])
        if result.get("evaluated") and not result.get("recorded", 1):
            res.events.append(f"candidate {result['cid']}: evaluated again but already recorded; kept the first")
        p = self.search.prepared
        res.total = p.store.count(p.study_id)
        if self.on_candidate is not None:
            self.on_candidate(res)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.res.retried += 1
        self.res.events.append(
            f"candidate {trial.config.get('cid')}: its Ray trial failed (worker or node died); Ray Tune runs it again"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise RuntimeError(_NOT_FROM_SNAPSHOT)


class _StopOnSignal(Stopper):
    """Ends the Tune run, stopping its trials, once SIGINT or SIGTERM set the stop flag.

    Tune's own SIGINT handler is disabled (``TUNE_DISABLE_SIGINT_HANDLER``): it
    would end the run as if it were finished, and a Ctrl-C would exit 0.
    """

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return interrupt_requested() is not None


class RayDriver(Driver):
    """``search.backend = "ray"``: connects before the study is prepared, then runs it with Ray Tune."""

    name = "ray"

    def connect(self, search: Search) -> None:
        connect(search.cfg.ray)

    def run(self, search: Search, on_candidate: Callable[[RunResult], None] | None) -> RunResult:
        return run_on_ray(search, on_candidate)


def run_on_ray(search: Search, on_candidate: Callable[[RunResult], None] | None = None) -> RunResult:
    """Evaluate candidates on the Ray cluster until the study holds ``search.candidates`` of them."""
    from ray import cloudpickle

    cfg = search.cfg
    p = search.prepared
    connect(cfg.ray)  # done by Search.prepare; the process stays connected (ray.shutdown() to leave)
    n = capacity(cfg.ray)
    res = search.new_result()
    searcher = CandidateSearcher(search, res)
    shipment = _Shipment(uuid.uuid4().hex, cloudpickle.dumps(p))
    resources = {"cpu": cfg.ray.cpus_per_candidate, "gpu": cfg.ray.gpus_per_candidate}
    trainable = tune.with_resources(tune.with_parameters(_candidate_trial, shipment=shipment), resources)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the store keeps the results
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours sets the stop flag; _StopOnSignal ends the run
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables on the console
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result files: ours
    name = f"{p.study}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,  # until the searcher says FINISHED
            max_concurrent_trials=n,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(cfg.search.artifacts_dir).resolve() / "ray"),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            callbacks=[_Progress(search, res, on_candidate)],
            stop=_StopOnSignal(),
            verbose=0,
        ),
    )
    tuner.fit()
    check_interrupt()  # stopped by SIGINT/SIGTERM: the command releases the driver's candidates
    # Tune stopped before some trials ended: hand their candidates to the next run at once
    left = p.store.release(p.study_id, search.worker, "its Ray trial stopped before the end")
    if left and res.on_time:  # claimed before the time ran out, never started: the next run evaluates them
        res.stopped = f"{res.stopped}; {left} claimed candidates handed back to the next run"
    elif left:
        res.stopped = f"interrupted: {left} candidates handed back; the same command evaluates them again"
    return search.conclude(res)


def _trial_name(trial: Any) -> str:
    return f"candidate-{trial.config.get('cid')}-{trial.trial_id}"
