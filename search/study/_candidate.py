"""One candidate's life: reserve → apply → evaluate → record.

Whatever schedules candidates (the local Optuna driver of :mod:`search.study._study`,
or a Ray driver) hands a repaired plan to a :class:`CandidateRunner`, which

1. **reserves** it in the store as RUNNING under this worker (``None`` when the
   study already holds the same plan; :class:`storage.StudyFullError` when the
   study is full), so no plan is evaluated twice, even by two workers;
2. **applies** it to the base model and **evaluates** the result rung by rung
   (BN recalibration, fine-tune, accuracy, latency if asked; it goes on to the
   next rung only when :mod:`search.study._rungs` promotes it) while a heartbeat
   thread tells other workers that this one is alive;
3. saves the fine-tuned weights (atomically) to a new file
   ``artifacts/studies/<study>/<id>-<8 hex>.safetensors`` when the candidate
   completes (the row names it);
4. **records** the outcome: the candidate row and the Pareto table are
   written in one transaction, then the scheduler is told (its ``record``
   callback returns the trial number, if it keeps trials, which the row then
   names). A candidate that is already finished (a scheduler ran it twice, or a
   worker thought dead finished what another had claimed) is recorded and told
   once, by the first to finish (``StudyStore.finish`` returns ``False`` for
   the second, whose own weights file is removed).

A worker killed in the middle leaves its candidate RUNNING; another worker
claims it later (``StudyStore.claim_stale``, judged by :func:`is_dead`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.preparation._profile import predicts_latency
from spaces import CandidateKind, Objective, Status, check_interrupt
from storage import PhaseTimes

if TYPE_CHECKING:
    from torch import nn

    from evaluators import Context, Metrics, TeacherPool
    from search.preparation._prepare import Prepared
    from spaces import Cost, Plan
    from storage import CandidateRow, StudyStore

__all__ = [
    "CandidateRunner",
    "Outcome",
    "Recorder",
    "Reporter",
    "Timings",
    "is_dead",
    "objective_values",
    "worker_id",
]

log = logging.getLogger("prunetune")

Recorder = Callable[[Status, list[float] | None], int | None]
"""Tells the scheduler a candidate's status and objective values; returns its trial number, if any."""

Reporter = Callable[[int, float], None]
"""Hears each intermediate ``(step, accuracy)`` of a fine-tune (e.g. to pass it on to Ray Tune)."""


def worker_id() -> str:
    """This process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead(owner: str | None) -> bool:
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


def objective_values(
    objectives: Sequence[Objective], accuracy: float, cost: Mapping[str, float], latency: float | None
) -> list[float]:
    """The values of ``objectives`` (in order) for a completed candidate: latency is the measured ``latency``
    where every candidate is measured, else the device profile's prediction (``cost["latency"]``); NaN for
    neither (as :attr:`storage.CandidateRow.latency` reads them back)."""
    out = []
    for obj in objectives:
        if obj is Objective.ACCURACY:
            out.append(accuracy)
        elif obj is Objective.LATENCY:
            value = latency if latency is not None else cost.get("latency")
            out.append(float(value) if value is not None else float("nan"))
        else:
            out.append(float(cost[obj.value]))
    return out


@dataclass
class Timings:
    """Seconds this worker spent per phase, summed over candidates."""

    sample: float = 0.0
    repair: float = 0.0
    apply: float = 0.0
    evaluate: float = 0.0
    store: float = 0.0
    candidates: int = 0
    schedule: float = 0.0  # Ray: seconds a warm slot waited between two candidates (Tune, the driver)
    scheduled: int = 0  # the waits measured

    def per_candidate(self) -> dict[str, float]:
        n = max(self.candidates, 1)
        out = {k: getattr(self, k) / n for k in ("sample", "repair", "apply", "evaluate", "store")}
        if self.scheduled:
            out["schedule"] = self.schedule / self.scheduled
        return out


@dataclass(frozen=True)
class Outcome:
    """How a candidate's evaluation ended (as recorded)."""

    status: Status
    values: list[float] | None  # the objectives' values when COMPLETE (what the scheduler was told)
    metrics: Metrics
    reason: str | None
    artifact: str | None  # the saved weights (COMPLETE only)
    trial_number: int | None
    recorded: bool = True  # False: the candidate was already finished (by an earlier run of it)


class _Heartbeat:
    """Renews a RUNNING candidate's heartbeat from a daemon thread."""

    def __init__(self, store: StudyStore, candidate_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, candidate_id, interval), daemon=True)

    def _run(self, store: StudyStore, cid: int, interval: float) -> None:
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


def save_candidate(model: nn.Module, path: Path, metrics: Metrics, rungs: Mapping[int, Any] | None = None) -> str:
    """Save a candidate's weights and, beside them, the per-image scores of its last evaluation
    (:mod:`storage._samples`: what ties are judged by) and of each rung it finished (``rungs``: steps ->
    ``(correct, loss, kl)``, what a promotion compares); the weights file's resolved path."""
    from evaluators import save_weights
    from storage import save_sample_scores

    saved = str(save_weights(model, path).resolve())
    if metrics.samples is not None:
        save_sample_scores(saved, *metrics.samples, rungs=rungs, kl=metrics.pool_kl)
    return saved


def score_on_pool(pool: TeacherPool | None, model: nn.Module, metrics: Metrics) -> Metrics:
    """``metrics`` with the model's divergence from the dense model on the teacher's pool (``evaluate.score =
    "kl"``: :class:`evaluators.TeacherPool`), its mean and per-image values; unchanged without a pool or for a
    failed evaluation."""
    if pool is None or metrics.status != Status.COMPLETE:
        return metrics
    kl = pool.score(model)["kl"]
    metrics.kl, metrics.pool_kl = kl.value, kl.per_image
    return metrics


def drop_candidate_files(artifact: str) -> None:
    """Remove a weights file that lost a race, and its per-image scores."""
    from storage import scores_path

    Path(artifact).unlink(missing_ok=True)
    scores_path(artifact).unlink(missing_ok=True)


def _artifact_name(cid: int) -> str:
    """A new weights file of candidate ``cid``: two evaluations of one candidate never write the same file."""
    return f"{cid}-{uuid.uuid4().hex[:8]}.safetensors"


def _phases(apply: float, evaluate: float, metrics: Metrics) -> PhaseTimes:
    """Seconds of a candidate's life per phase (what reports draw): surgery, fine-tune, evaluation, the rest."""
    train, evals = metrics.train_seconds, metrics.eval_seconds
    return PhaseTimes(apply=apply, train=train, eval=evals, other=max(evaluate - train - evals, 0.0))


@dataclass
class _Climb:
    """One candidate's way up the rungs: the last rung's metrics, the rungs reached, the accuracies seen."""

    metrics: Metrics = field(default_factory=lambda: _metrics())
    reached: list[list[float]] = field(default_factory=list)  # [steps, accuracy, loss] per finished rung
    history: list[tuple[int, float]] = field(default_factory=list)  # [step, accuracy], steps from rung 0
    train: float = 0.0
    evals: float = 0.0
    lost: bool = False  # another worker claimed the candidate
    samples: dict[int, Any] = field(default_factory=dict)  # steps -> (correct, loss, kl) per image, per finished rung

    def reach(self, steps: int, metrics: Metrics) -> None:
        """Keep a finished rung: ``[steps, accuracy(, loss(, kl))]`` and its per-image scores."""
        scores: list[float] = []
        if metrics.loss is not None:
            scores = [metrics.loss] if metrics.kl is None else [metrics.loss, metrics.kl]
        self.reached.append([steps, float(metrics.accuracy or 0.0), *scores])
        if metrics.samples is not None:
            self.samples[steps] = (*metrics.samples, metrics.pool_kl)

    def add(self, metrics: Metrics, done: int) -> Metrics:
        """Take one rung's ``metrics`` (its steps counted after ``done``); returns them."""
        self.metrics = metrics
        self.history += [(done + s, a) for s, a in metrics.history]
        self.train, self.evals = self.train + metrics.train_seconds, self.evals + metrics.eval_seconds
        return metrics


def _metrics() -> Metrics:
    from evaluators import Metrics

    return Metrics()


class CandidateRunner:
    """Lives candidates of one prepared study for one worker (see the module docs for the steps).

    ``timings`` (shared with the driver) collects the apply, evaluate and store seconds.
    """

    def __init__(self, prepared: Prepared, worker: str, timings: Timings) -> None:
        self.prepared = prepared
        self.worker = worker
        self.timings = timings

    def reserve(self, plan: Plan, trial_number: int | None = None, *, kind: CandidateKind | None = None) -> int | None:
        """The new RUNNING candidate's id; ``None`` if the study holds this plan; StudyFullError when full.

        ``kind``: where the plan came from (``allocator``, ``uniform``, ``sampled``), kept for reports.
        """
        p = self.prepared
        t0 = time.perf_counter()
        cid = p.store.reserve(
            p.study_id,
            plan.to_json(),
            plan.hash,
            trial_number,
            worker=self.worker,
            limit=p.config.search.candidates,
            kind=kind,
        )
        self.timings.store += time.perf_counter() - t0
        return cid

    def promoted(self, cid: int, rung: int, samples: Any = None) -> bool:
        """Whether candidate ``cid``, just through rung ``rung``, goes on (:mod:`search.study._rungs`).

        It is ranked among the candidates measured after the same number of fine-tune steps, by
        ``evaluate.score`` (accuracy, minus the validation loss, or minus the teacher-pool KL) and the costs.
        With ``evaluate.promote_ties``, a candidate just below the cut goes on too when a promoted one beats it
        only inside the noise, judged on ``samples`` (its ``(correct, loss, kl)`` per image at this rung) against
        the rung's per-image scores kept beside the others' weights.
        """
        from search.study._rungs import promotes, rivals

        p = self.prepared
        points, rows, me = self._rung_points(cid, p.rungs[rung])
        if me < 0:
            return False
        factor = p.config.evaluate.reduction_factor
        if promotes(points, me, factor):
            return True
        if not p.config.evaluate.promote_ties or samples is None:
            return False
        return self._tied(cid, p.rungs[rung], samples, [rows[i] for i in rivals(points, me, factor)])

    def _rung_points(self, cid: int, steps: int) -> tuple[list[list[float]], list[CandidateRow], int]:
        """The points ranked at the rung that ends after ``steps`` (minus the score, then the analytic costs),
        their rows, and the index of candidate ``cid`` among them (-1: not there)."""
        p = self.prepared
        score = p.config.evaluate.score
        costs = [o for o in p.objectives if o.is_cost and o is not Objective.LATENCY]
        points: list[list[float]] = []
        rows: list[CandidateRow] = []
        me = -1
        for row in p.store.candidates(p.study_id):
            value = row.score_after(steps, score)
            values = [row.objective(o) for o in costs]
            if value is None or any(v is None for v in values):
                continue
            if row.id == cid:
                me = len(points)
            points.append([-value, *(float(v) for v in values)])  # type: ignore[arg-type]
            rows.append(row)
        return points, rows, me

    def _tied(self, cid: int, steps: int, samples: Any, rivals: Sequence[CandidateRow]) -> bool:
        """Whether one of ``rivals`` (promoted, scoring better) beats candidate ``cid`` only inside the noise on
        the rung's images: under two paired standard errors (:func:`storage.paired_difference`)."""
        from storage import load_sample_scores, paired_difference

        score = self.prepared.config.evaluate.score
        mine = {"correct": samples[0], "loss": samples[1]}
        if len(samples) > 2 and samples[2] is not None:  # the teacher's pool (score = "kl")
            mine["kl"] = samples[2]
        for rival in rivals:
            theirs = load_sample_scores(rival.artifact, steps) if rival.artifact else None
            paired = paired_difference(theirs, mine, score) if theirs is not None else None
            if paired is not None and paired.tied:
                log.info(
                    "candidate %s goes on within the noise of candidate %s at %s steps (%s %+.4f ± %.4f)",
                    cid,
                    rival.id,
                    steps,
                    score,
                    paired.diff,
                    paired.se,
                )
                return True
        return False

    def _rung_context(self, rung: int, steps: int, report: Reporter | None, done: int) -> Context:
        """The evaluation context of rung ``rung``: ``steps`` more fine-tune steps, its validation subset."""
        from evaluators import Context

        p = self.prepared
        e = p.config.evaluate
        last = rung == len(p.rungs) - 1
        callback = None
        if report is not None:

            def callback(step: int, accuracy: float) -> bool:
                report(done + step, accuracy)
                return True

        return Context(
            data=p.data,
            teacher=p.base_model if e.needs_teacher(e.kd_weight) else None,
            device=p.device,
            seed=e.seed + rung,
            batch_size=e.batch_size,
            max_val_samples=None if last and len(p.rungs) > 1 else e.max_val_samples,
            callback=callback,
            steps=steps,
            resumed=done > 0,
        )

    def evaluate(
        self, cid: int, plan: Plan, cost: Cost, record: Recorder, *, report: Reporter | None = None
    ) -> Outcome:
        """Apply and evaluate reserved candidate ``cid`` rung by rung, tell ``record``, then store the outcome.

        ``report`` hears every intermediate accuracy (steps counted from the first rung's start).
        The scheduler is told the objectives at rung 0, the fidelity every candidate reaches.
        """
        p = self.prepared
        t0 = time.perf_counter()
        owner = p.store.candidate(p.study_id, id=cid).worker  # this worker, or (Ray) the driver that reserved it
        with _Heartbeat(p.store, cid, min(30.0, p.config.storage.grace_seconds / 4)):
            model = p.space.apply(plan)
            t1 = time.perf_counter()
            climb = self._climb(cid, model, cost.as_dict(), report, owner or self.worker)
            t2 = time.perf_counter()
            artifact = None
            if climb.metrics.status == Status.COMPLETE and not climb.lost:
                artifact = save_candidate(model, p.artifacts / _artifact_name(cid), climb.metrics, climb.samples)
        self.timings.apply += t1 - t0
        self.timings.evaluate += t2 - t1
        if climb.lost:
            reason = "taken over by another worker"
            return Outcome(Status.FAIL, None, climb.metrics, reason, None, None, recorded=False)
        outcome = self._record(cid, climb, cost, record, artifact, (t0, t1, t2))
        self.timings.store += time.perf_counter() - t2
        self.timings.candidates += 1
        return outcome

    def _rung(self, model: nn.Module, rung: int, steps: int, done: int, report: Reporter | None) -> Metrics:
        """Rung ``rung``'s evaluation (``steps`` more fine-tune steps after ``done``); a failure becomes FAIL."""
        from evaluators import Metrics

        try:
            metrics = self.prepared.evaluator.evaluate(model, self._rung_context(rung, steps, report, done))
            if metrics.status == Status.COMPLETE and metrics.accuracy is None:
                return Metrics(status=Status.FAIL, reason="the evaluator reported no accuracy")
            return score_on_pool(self.prepared.pool, model, metrics)
        except (ValueError, RuntimeError) as exc:  # e.g. a shape error the space did not foresee
            return Metrics(status=Status.FAIL, reason=f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _tell(self, cid: int, status: Status, values: list[float] | None, record: Recorder) -> int | None:
        """Tell the scheduler a recorded outcome; the store keeps the number of the trial that holds it."""
        number = record(status, values)
        if number is not None:
            self.prepared.store.set_trial_number(cid, number)
        return number

    def _climb(self, cid: int, model: nn.Module, cost: dict[str, int], report: Reporter | None, owner: str) -> _Climb:
        """The rungs, while the candidate is promoted; a rung that fails after the first keeps the last one."""
        p = self.prepared
        climb, done = _Climb(), 0
        kept: tuple[Metrics, dict[str, Any]] | None = None  # the last finished rung's metrics and weights
        for rung, steps in enumerate(p.rungs):
            check_interrupt()  # a safe point: between two rungs
            metrics = climb.add(self._rung(model, rung, steps - done, done, report), done)
            if metrics.status != Status.COMPLETE or metrics.accuracy is None:
                if kept is not None:  # failed above rung 0: keep what the last rung measured
                    why = metrics.reason
                    climb.metrics, state = kept
                    model.load_state_dict(state)
                    climb.metrics.reason = f"rung {rung} failed ({why}); kept rung {rung - 1}"
                break
            climb.reach(steps, metrics)
            done = steps
            if rung == len(p.rungs) - 1:
                break
            if not p.store.record_rung(
                cid, rung, steps, metrics.accuracy, cost, owner, loss=metrics.loss, kl=metrics.kl
            ):
                climb.lost = True  # another worker claimed it (we looked dead): it records the candidate
                break
            if not self.promoted(cid, rung, climb.samples.get(steps)):
                break
            kept = (metrics, {k: v.detach().clone() for k, v in model.state_dict().items()})
        return climb

    def _record(
        self,
        cid: int,
        climb: _Climb,
        cost: Cost,
        record: Recorder,
        artifact: str | None,
        times: tuple[float, float, float],
    ) -> Outcome:
        """Store the outcome and the front in one transaction; if that recorded it, tell the scheduler.

        Only the first finisher tells (the objectives at rung 0), so a candidate evaluated twice
        (a worker thought dead and the one that claimed it) is told once.
        """
        p, metrics = self.prepared, climb.metrics
        cdict: dict[str, float] = dict(cost.as_dict())
        if cost.latency is not None and predicts_latency(p.config):  # what the study limits or ranks by
            cdict["latency"] = cost.latency
        status = Status(metrics.status)
        latency = next(iter(metrics.latency_ms.values()), None) if metrics.latency_ms else None
        values = None
        if status is Status.COMPLETE and climb.reached:
            values = objective_values(p.objectives, climb.reached[0][1], cdict, latency)
        history = climb.history
        metrics.history, metrics.train_seconds, metrics.eval_seconds = history, climb.train, climb.evals
        t0, t1, t2 = times
        recorded = p.store.finish(
            cid,
            status,
            accuracy=metrics.accuracy if status is Status.COMPLETE else (history[-1][1] if history else None),
            cost=cdict,
            latency_ms=metrics.latency_ms or None,
            seconds=t2 - t0,
            error=metrics.reason,
            history=history,
            artifact=artifact,
            objectives=p.objectives,
            phases=_phases(t1 - t0, t2 - t1, metrics),
            rungs=climb.reached if status is Status.COMPLETE else None,
        )
        number = self._tell(cid, status, values, record) if recorded else None
        if not recorded and artifact and p.store.candidate(p.study_id, id=cid).artifact != artifact:
            drop_candidate_files(artifact)  # the first finisher's weights are the candidate's
            artifact = None
        return Outcome(status, values, metrics, metrics.reason, artifact, number, recorded=recorded)
