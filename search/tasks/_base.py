"""The task contract and its registry (see :mod:`search.tasks`)."""

from __future__ import annotations

import tomllib
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spaces import Registry, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from storage import StudyRecord, StudyStore

__all__ = ["TASKS", "VISION", "SubmissionError", "Task", "register_task", "task_flags", "task_of", "task_of_study"]

VISION = "vision"


class SubmissionError(UsageError):
    """A config submitted to the service that is invalid or names what the server does not register (HTTP 422)."""


# a config without ``task``: search.Search's pipeline, not an entry of TASKS


class Task(ABC):
    """A kind of study beside the vision pipeline: its config, its run, its front.

    ``name`` is what a config's top-level ``task`` key says. ``flags`` lists the
    ``--section.key`` overrides its config takes (``(key, help, is_list)``, as
    :func:`search._config.config_flags`); the CLI adds the ones the vision config
    does not have. ``run`` validates the config (a one-line ``ValueError`` on bad
    input, before anything is written), runs or resumes the study and prints its
    front; it returns the exit code. ``locate`` reads a config's storage URL and
    study name (what ``front``, ``status``, ``report`` and ``export`` open);
    ``show_front``, ``show_status``, ``write_report``, ``export`` and ``page``
    (the service's) serve a stored study of this task (its row's ``space_options["task"]`` names it).
    ``profile`` is ``prunetune profile`` on a config of this task (a task without a latency model says so);
    ``check_submission`` and ``run_submission`` take its configs through the service (a task that does not
    say how is refused in one line).
    """

    name: str

    @abstractmethod
    def flags(self) -> list[tuple[str, str, bool]]:
        """The ``--section.key`` flags of this task's config."""

    @abstractmethod
    def run(self, path: str, overrides: dict[str, Any], *, quiet: bool) -> int:
        """Run (or resume) the study of config ``path`` with ``overrides``; print its front."""

    @abstractmethod
    def locate(self, path: str) -> tuple[str, str]:
        """The storage URL and the study name config ``path`` gives."""

    @abstractmethod
    def show_front(self, console: Console, store: StudyStore, study: StudyRecord, *, plans: bool) -> None:
        """Print the stored study's Pareto front (``plans``: each member's whole plan too)."""

    @abstractmethod
    def show_status(self, console: Console, store: StudyStore, study: StudyRecord) -> None:
        """Print the stored study's progress and its best candidate."""

    @abstractmethod
    def write_report(self, store: StudyStore, study: StudyRecord, out: Path) -> list[Path]:
        """Write the stored study's report files into ``out`` (a staging folder); returns their paths."""

    @abstractmethod
    def export(self, config: str | None, store: StudyStore, study: StudyRecord, trial: int, out: Path) -> list[str]:
        """Write trial ``trial`` of the stored study into ``out``; returns the lines to print."""

    @abstractmethod
    def page(self, store: StudyStore, study: StudyRecord, *, plotlyjs: str | None) -> tuple[str, dict[str, Any]]:
        """The stored study's report page (HTML; ``plotlyjs``: a URL to load plotly.js from, else inlined) and
        its front figure as plotly JSON (what the service's page polls while the study runs)."""

    def check_submission(self, raw: Mapping[str, Any], factories: Collection[str]) -> Any:
        """The validated config (a pydantic model with ``task``, ``search.study`` and ``model_dump``) of a config
        submitted to the service; a one-line :class:`SubmissionError` when it is invalid
        or names what the server does not register (``factories``: the specs the server lists)."""
        raise SubmissionError(f"submitted config: task {self.name!r} cannot be submitted to the service")

    def run_submission(self, cfg: Any, store: StudyStore, artifacts_dir: str) -> None:
        """Run a submitted study (``cfg`` from :meth:`check_submission`) in the server's ``store`` and the
        worker's ``artifacts_dir``."""
        raise ValueError(f"task {self.name!r} cannot be submitted to the service")

    def profile(self, path: str, overrides: dict[str, Any], *, runs: int, force: bool) -> int:
        """Measure (or read from the store) and print this machine's latency model for config ``path``'s model."""
        raise ValueError(f"task {self.name!r} has no device profile: `prunetune profile` takes vision configs")


TASKS: Registry[Task] = Registry(
    "study task",
    Task,
    group="prunetune.tasks",
    builtins={"decoder": "search.tasks._decoder:DecoderTask"},
    error=ValueError,
    what="task",
)


def register_task(t: Task | type[Task], *, replace: bool = False) -> Task:
    """Add a task under its ``name`` (``replace=True`` replaces one of that name)."""
    return TASKS.register(t, replace=replace)


def task_of(path: str | Path) -> str:
    """The task a TOML config names at its top (``"vision"`` when it names none or cannot be read: the vision
    loader then says what is wrong with the file)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return VISION
    task = data.get("task", VISION)
    if not isinstance(task, str):
        raise ValueError(f"{p}: config key 'task' must be a name like \"decoder\", got {task!r}")
    if task != VISION and task not in TASKS:
        names = ", ".join((VISION, *TASKS.names()))
        raise ValueError(f"{p}: config key 'task' must be one of {names}, got {task!r}")
    return task


def task_of_study(study: StudyRecord) -> Task | None:
    """The task of a stored study (``None``: a vision study)."""
    name = study.space_options.get("task")
    return None if name in (None, VISION) else TASKS.get(str(name))


def task_flags() -> list[tuple[str, str, bool]]:
    """Every task's flags, each key once (the first task's help)."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for name in TASKS.names():
        for flag in TASKS.get(name).flags():
            seen.setdefault(flag[0], flag)
    return list(seen.values())
