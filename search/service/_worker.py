"""Studies submitted to the service: what a submission may name, and the worker that runs them.

A submitted config comes from the network, so it is checked against what the
*server* registers before anything is stored (:func:`check_submission`): it is
validated by the same pydantic schema as a TOML config (:class:`search.Config`),
and it may name only

* models from the zoo (``zoo:``), torchvision (``torchvision:``) or timm (``timm:``), data from
  the built-in specs (``digits``, ``fashion-mnist``, ``synthetic``), and
* ``package.module:factory`` specs that the server lists itself (``--factory``),
* for a language-model study (``"task": "decoder"``): the teacher trained here
  (``teacher:stdlib``), ``hf-tiny:`` models, and ``hf:PATH`` directories the
  server lists (``--factory hf:/models/my-llama``),

never an import path, a weights file, a data folder or a Ray cluster of its own:
the server's store and the worker's artifacts folder and cluster are used. A worker (``prunetune worker``,
:func:`run_worker`) claims queued submissions from the store one at a time,
checks them again against its own registry, and runs each with the normal
:class:`search.Search`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from search._config import Config, _error
from search.tasks import SubmissionError  # defined beside the task contract, which raises it too
from spaces import check_interrupt

if TYPE_CHECKING:
    from storage import StudyStore, SubmissionRecord

__all__ = ["BUILTIN_DATA", "SubmissionError", "check_submission", "run_submission", "run_worker"]

BUILTIN_DATA = ("digits", "fashion-mnist", "synthetic")
_SAFE_MODELS = ("zoo:", "torchvision:", "timm:")  # library registries: no code named by the config
log = logging.getLogger("prunetune")


def check_submission(raw: Mapping[str, Any], factories: Collection[str] = ()) -> Any:
    """The validated config of a submitted JSON config (a :class:`Config`; a plug-in task's, such as a
    language model's with ``"task": "decoder"``, from :meth:`search.tasks.Task.check_submission`);
    :class:`SubmissionError` (one line) if it is invalid or names a model, data or file that the server
    does not register."""
    from search.tasks import TASKS, VISION

    task = raw.get("task", VISION)
    if task != VISION:
        if not isinstance(task, str) or task not in TASKS:
            names = ", ".join((VISION, *TASKS.names()))
            raise SubmissionError(f"submitted config: task must be one of {names}, got {task!r}")
        return TASKS.get(task).check_submission(raw, factories)
    try:
        cfg = Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise SubmissionError(str(_error(exc, "submitted config"))) from None
    if not cfg.budget_dict():
        raise SubmissionError('submitted config: [budget] needs at least one of macs, params, bytes (e.g. "50%")')
    if not cfg.search.study:
        raise SubmissionError("submitted config: search.study must name the new study")
    allowed = sorted(factories)
    known = f"zoo:<name>, torchvision:<name>, timm:<name>{', ' if allowed else ''}{', '.join(allowed)}"
    if not cfg.model.spec.startswith(_SAFE_MODELS) and cfg.model.spec not in factories:
        raise SubmissionError(
            f"submitted config: model.spec {cfg.model.spec!r} is not registered on this server; it takes {known}"
        )
    if cfg.data.spec not in BUILTIN_DATA and cfg.data.spec not in factories:
        data = ", ".join([*BUILTIN_DATA, *allowed])
        raise SubmissionError(
            f"submitted config: data.spec {cfg.data.spec!r} is not registered on this server; it takes {data}"
        )
    for key, value in (("model.weights", cfg.model.weights), ("data.data_dir", cfg.data.data_dir)):
        if value is not None:
            raise SubmissionError(f"submitted config: {key} names a file on the server ({value!r}): leave it out")
    for key, value in (("ray.address", cfg.ray.address), ("ray.node_ip", cfg.ray.node_ip)):
        if value is not None:
            raise SubmissionError(f"submitted config: {key} is the worker's to choose ({value!r}): leave it out")
    return cfg


def run_submission(sub: SubmissionRecord, store: StudyStore, artifacts_dir: str, factories: Collection[str]) -> None:
    """Run one claimed submission with the normal search (or its task's study), in ``store`` and
    ``artifacts_dir``."""
    from search.study._study import Search
    from search.tasks import TASKS

    cfg = check_submission(sub.config, factories)
    if not isinstance(cfg, Config):  # a plug-in task's config
        TASKS.get(cfg.task).run_submission(cfg, store, artifacts_dir)
        return
    cfg.storage.url = store.url
    cfg.search.artifacts_dir = artifacts_dir
    Search(cfg).run()


def _wait(seconds: float) -> None:
    """Sleep ``seconds``, but wake within a tenth of a second when a stop is requested."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_interrupt()
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))


def run_worker(
    store: StudyStore,
    *,
    artifacts_dir: str = "artifacts",
    factories: Collection[str] = (),
    once: bool = False,
    poll: float = 2.0,
    say: Callable[[str], None] = print,
) -> int:
    """Claim and run submissions until stopped (``once``: until the queue is empty); returns how many ran.

    A submission that fails (bad input, a search error) is marked ``failed`` with the
    one-line reason and the worker goes on; a bug keeps its traceback in the log.
    """
    from search._exit_codes import explain
    from search.study._candidate import is_dead, worker_id
    from storage import Submissions

    queue = Submissions(store)
    worker = worker_id()
    for sid in queue.requeue_stopped(is_dead):
        say(f"submission {sid}: its worker stopped; queued again")
    ran = 0
    while True:
        check_interrupt()  # a safe point: between two submissions, and while the queue is empty
        sub = queue.claim(worker)
        if sub is None:
            if once:
                return ran
            _wait(poll)
            continue
        say(f"running submission {sub.id}: study {sub.study!r}")
        try:
            run_submission(sub, store, artifacts_dir, factories)
        except KeyboardInterrupt:
            queue.finish(sub.id, worker, error="interrupted: the worker was stopped")
            raise
        except Exception as exc:
            known = explain(exc)
            if known is None:
                log.exception("submission %s failed with a bug", sub.id)
            reason = known[1] if known is not None else f"internal error: {type(exc).__name__}: {exc}"
            queue.finish(sub.id, worker, error=reason.splitlines()[0])
            say(f"submission {sub.id} failed: {reason}")
        else:
            queue.finish(sub.id, worker)
            say(f"submission {sub.id} done: study {sub.study!r}")
        ran += 1
