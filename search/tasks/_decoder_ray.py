"""A language-model study on a Ray cluster (``search.backend = "ray"``): Tune runs candidates, the store decides.

The same split as the vision driver (:mod:`search.drivers._ray`), on the
decoder study's own pieces:

* **proposing** happens in this process, in :class:`DecoderSearcher` (a
  ``ray.tune.search.Searcher``): its ``suggest`` claims the candidates a stopped
  run left RUNNING first, then proposes a seed or the sampler's plan and
  reserves it in the store by plan hash (:meth:`DecoderStudy._propose`); a full
  study is Tune's ``FINISHED``. A trial's config is the candidate's id and its
  Optuna trial number.
* **recovering and scoring** run in the trial, on whichever node Tune picked:
  the loaded study (model, Wanda-sp scores and Gram matrices, text) is shipped
  once per run through the object store and unpickled once per actor process;
  the trial recovers the stored plan, scores it, records it and its front in one
  transaction and tells Optuna (:meth:`DecoderStudy._finish`), unless the row is
  already finished (Tune retries a trial whose node died: a retry records nothing).

The store is the single source of truth: Tune's snapshots are never restored (a
killed driver is resumed by running the same command again), a candidate Tune
gave up on is recorded as FAIL by ``on_trial_complete``, and the re-scoring
rung runs in this process once every candidate is in.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import cloudpickle, tune
from ray.tune.search import Searcher

from search.drivers._ray import StoreSearcher, capacity, connect
from search.tasks._decoder_study import OBJECTIVES, DecoderStudy, Outcome
from spaces import Plan, Status

__all__ = ["DecoderSearcher", "run_decoder_on_ray"]

_FINISHED: Any = Searcher.FINISHED


@dataclass(frozen=True)
class _Shipment:
    """The loaded study, pickled once by the driver; ``token`` names the run so actors unpickle it once."""

    token: str
    payload: bytes


class _TrialStudy:
    """The study as a trial process holds it: one per run and process (Tune reuses actors across trials)."""

    _cache: dict[str, DecoderStudy] = {}  # noqa: RUF012

    @classmethod
    def get(cls, shipment: _Shipment) -> DecoderStudy:
        got = cls._cache.get(shipment.token)
        if got is None:
            cfg, space, text, latency, study_id = cloudpickle.loads(shipment.payload)
            cls._cache.clear()
            got = cls._cache[shipment.token] = DecoderStudy(cfg).attach(space, text, latency, study_id)
        return got


def _decoder_trial(config: dict[str, Any], shipment: _Shipment) -> None:
    """A Tune trial: recover, score and record candidate ``config["cid"]`` (nothing when it is recorded already)."""
    study = _TrialStudy.get(shipment)
    cid, number = int(config["cid"]), config.get("trial")
    row = study.store.candidate(study.study_id, id=cid)
    if Status(row.status).finished:  # an earlier run of this trial recorded it
        tune.report({"cid": cid, "evaluated": 0, "perplexity": row.perplexity})
        return
    out = Outcome()
    study._finish(cid, Plan.from_json(row.plan), None if number is None else int(number), out)
    tune.report({"cid": cid, "evaluated": out.evaluated, "seconds": sum(out.seconds)})


class DecoderSearcher(StoreSearcher):
    """Proposes the decoder study's candidates to Ray Tune; the store records them (see the module docs)."""

    def __init__(self, study: DecoderStudy) -> None:
        super().__init__(study.cfg.ray.max_failures)
        self.study = s = study
        self.retries = [r.id for r in s.claim_stale()]

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        s = self.study
        if self.finished:
            return _FINISHED
        if self.retries:
            config: dict[str, Any] = {"cid": self.retries.pop(0), "trial": None}
        elif s.store.count(s.study_id) >= s.cfg.search.candidates:
            self.finished = True
            return _FINISHED
        else:
            proposal = s._propose()
            if proposal is None:  # a duplicate or a plan the depth cannot reach: ask again later
                return None
            config = {"cid": proposal[0], "trial": proposal[2]}
        self.trials[trial_id] = config
        return config

    def record_failure(self, config: dict[str, Any], reason: str) -> None:
        s = self.study
        if s.store.candidate(s.study_id, id=config["cid"]).status is Status.RUNNING:
            s.store.finish(config["cid"], Status.FAIL, error=reason, objectives=OBJECTIVES)


class _Progress(tune.Callback):
    """Counts what the trials evaluated, for the run's outcome and the caller's progress bar."""

    def __init__(self, study: DecoderStudy, out: Outcome, on_candidate: Any) -> None:
        self.study, self.out, self.on_candidate = study, out, on_candidate

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self.out.evaluated += int(result.get("evaluated", 0))
        if result.get("evaluated"):
            self.out.seconds.append(float(result.get("seconds", 0.0)))
        self.out.total = self.study.store.count(self.study.study_id)
        if self.on_candidate is not None:
            self.on_candidate(self.out)

    def __getstate__(self) -> dict[str, Any]:
        return {}


def run_decoder_on_ray(study: DecoderStudy, on_candidate: Any = None) -> Outcome:
    """Recover the prepared ``study``'s candidates as Ray Tune trials until it holds ``search.candidates``, then
    re-score the best here (see the module docs)."""
    cfg = study.cfg
    connect(cfg.ray)
    out = Outcome(total=study.store.count(study.study_id))
    shipped = cfg.model_copy(deep=True)  # a trial runs in a directory of its own: every path absolute
    shipped.storage.url = _absolute(study.store.url)
    shipped.search.artifacts_dir = str(Path(cfg.search.artifacts_dir).resolve())
    payload = cloudpickle.dumps((shipped, study.space, study.text, study.latency, study.study_id))
    shipment = _Shipment(uuid.uuid4().hex, payload)
    resources = {"cpu": cfg.ray.cpus_per_candidate, "gpu": cfg.ray.gpus_per_candidate}
    trainable = tune.with_resources(tune.with_parameters(_decoder_trial, shipment=shipment), resources)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=DecoderSearcher(study),
            num_samples=-1,
            max_concurrent_trials=capacity(cfg.ray),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(Path(cfg.search.artifacts_dir).resolve() / "ray"),
            failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
            callbacks=[_Progress(study, out, on_candidate)],
            verbose=0,
        ),
    )
    tuner.fit()
    study.store.release(study.study_id, study.worker, "its Ray trial stopped before the end")
    out.total = study.store.count(study.study_id)
    out.rescored = study.rescore()
    return out


def _absolute(url: str) -> str:
    """``url`` with a relative SQLite file made absolute (other databases as they are)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = u.database or ""
    if u.get_backend_name() != "sqlite" or name in ("", ":memory:") or name.startswith("file:"):
        return url
    return u.set(database=str(Path(name).resolve())).render_as_string(hide_password=False)
