"""The commands of the ``prunetune`` CLI that run a study or read one (``inspect`` and the service have their own)."""

from __future__ import annotations

import argparse
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search._config import config_flags, legacy_flags, load_config, missing_onnx
from search.cli._tables import front_table, pct
from search.operations._export import export_candidate, out_dir
from search.operations._finalize import finalize
from search.operations._report_data import write_study_report
from search.operations._staged import staged
from search.study._candidate import is_dead
from search.study._study import RunResult, Search
from spaces import Interrupted, Status, UsageError, interrupt_requested
from storage import best_within_cap, latency_check, pick_within_cap

if TYPE_CHECKING:
    from search.tasks import Task
    from storage import StudyStore

__all__ = [
    "add_config_flags",
    "cmd_export",
    "cmd_finalize",
    "cmd_front",
    "cmd_report",
    "cmd_run",
    "cmd_status",
    "open_study",
    "overrides",
]


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One ``--section.key`` flag per config key (what :func:`overrides` reads back); the key's description is its
    help. argparse formats help strings with ``%``, so a description that says "40%" must reach it as "40%%"."""
    for key, text, is_list in config_flags():
        help_text = text.replace("%", "%%") if text else f"overrides [{key.partition('.')[0]}] {key.partition('.')[2]}"
        p.add_argument(f"--{key}", dest=key, metavar="LIST" if is_list else "VALUE", help=help_text)
    for key, is_list in legacy_flags():  # the flat keys of older configs: still read (into their tables), not shown
        p.add_argument(f"--{key}", dest=key, metavar="LIST" if is_list else "VALUE", help=argparse.SUPPRESS)
    for key, text, is_list in _task_only_flags():  # a language-model config's own keys (task = "decoder")
        help_text = (text.replace("%", "%%") + " (task = decoder)") if text else f"overrides {key} (task = decoder)"
        p.add_argument(f"--{key}", dest=key, metavar="LIST" if is_list else "VALUE", help=help_text)


def _task_only_flags() -> list[tuple[str, str, bool]]:
    """The flags of the other tasks' configs that the vision config does not have."""
    from search.tasks import task_flags

    vision = {k for k, _, _ in config_flags()} | {k for k, _ in legacy_flags()}
    return [f for f in task_flags() if f[0] not in vision]


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    every = [*config_flags(), *((k, "", is_list) for k, is_list in legacy_flags()), *_task_only_flags()]
    for key, _help, is_list in every:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
    return out


def _run_releasing(search: Search, update: Callable[[RunResult], None]) -> RunResult:
    """Run the study; when it is stopped, hand its running candidate to the next run at once."""
    p = search.prepared
    try:
        return search.run(update)
    except KeyboardInterrupt as exc:
        by_user = not isinstance(exc, Interrupted) or exc.signum == signal.SIGINT
        p.store.release(p.study_id, search.worker, "interrupted by the user" if by_user else str(exc))
        raise
    except Exception:  # a failure after a stop was asked for ends as the stop (search.cli._main): release too
        if interrupt_requested() is not None:
            p.store.release(p.study_id, search.worker, "interrupted by the user")
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from search.tasks import TASKS, task_of

    kind = task_of(args.config)
    if kind != "vision":  # a plug-in task (task = "decoder"): its own config, study and front
        return TASKS.get(kind).run(args.config, overrides(args), quiet=args.quiet)
    cfg = load_config(args.config, overrides(args))
    err = Console(stderr=True)
    out = Console()
    search = Search(cfg)
    with err.status(f"preparing study {cfg.search.study!r} (data, baseline, space, allocator)"):
        p = search.prepare(progress=False).prepared
    err.print(
        f"study {p.study!r} in {p.store.display_url}: base accuracy {p.base_accuracy:.4f}, "
        f"{len(p.space.groups)} groups, budget {p.budget.to_dict()}"
    )
    target = cfg.search.candidates
    with Progress(
        TextColumn("[bold]candidates"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=args.quiet,
    ) as bar:
        done0 = p.store.count(p.study_id)
        task = bar.add_task("run", total=target, completed=min(done0, target), info="")

        def update(res: RunResult) -> None:
            front = p.store.front(p.study_id)
            top = best_within_cap(front, p.config.evaluate.score)
            best = None if top is None else top.accuracy
            info = f"best {best:.4f} within budget, front {len(front)}" if best is not None else "no result yet"
            bar.update(task, completed=min(res.total, target), info=info)

        res = _run_releasing(search, update)
    for line in res.events:
        err.print(line)
    if res.stopped:
        err.print(res.stopped if res.on_time else f"stopped early: {res.stopped}")
    on_time = f"; stopped on time ({p.config.search.time})" if res.on_time else ""
    title = f"Pareto front of {res.study!r} ({len(res.front)} of {res.total}{on_time})"
    over = p.store.over_cap(p.study_id)  # measured over the latency cap: listed below the front
    out.print(front_table(title, res.front, res.base_cost, p.config.evaluate.score, over))
    summary = latency_check(res.front)
    if summary:
        out.print(summary)
    t = res.timings.per_candidate()
    out.print(
        f"this run: {res.evaluated} evaluated, {res.duplicates} duplicate plans skipped, {res.retried} retried; "
        "seconds per candidate: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items())
    )
    out.print(f"finalize one (long fine-tune, test accuracy) with: prunetune finalize {args.config} --trial N")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:

    cfg = load_config(args.config, overrides(args))
    done = finalize(cfg, trials=args.trial or (), front=args.front, steps=args.steps, out=args.out, progress=True)
    table = Table(title=f"finalized ({done[0].steps} fine-tune steps, distilled)" if done else "finalized")
    for col in ("trial", "val acc (search)", "val acc (final)", "test acc", "seconds", "export"):
        table.add_column(col, justify="right")
    for f in done:
        table.add_row(
            str(f.trial),
            f"{f.search_accuracy:.4f}" if f.search_accuracy is not None else "-",
            f"{f.val_accuracy:.4f}",
            f"{f.test_accuracy:.4f}" if f.test_accuracy is not None else "no test split",
            f"{f.seconds:.0f}",
            str(f.export or "-"),
        )
    Console().print(table)
    return 0


def open_study(args: argparse.Namespace) -> tuple[StudyStore, str]:
    from search.tasks import TASKS, VISION, task_of
    from storage import StudyStore  # heavy: SQLAlchemy (the commands' --help stays light)

    url, study = args.storage, args.study
    if args.config is not None and (task := task_of(args.config)) != VISION:
        found_url, found_study = TASKS.get(task).locate(args.config)
        url, study = url or found_url, study or found_study
    elif args.config is not None:
        cfg = load_config(args.config)
        url = url or cfg.storage.url
        study = study or cfg.search.study
    store = StudyStore.open_existing(url or "sqlite:///prunetune.db")
    if study is None:
        names = store.study_names()
        if len(names) != 1:
            raise UsageError(f"name the study with --study; {store.display_url} holds: {', '.join(names) or 'none'}")
        study = names[0]
    return store, study


def _task_of_stored(store: StudyStore, study: str) -> Task | None:
    """The plug-in task of a stored study (``None``: a vision study)."""
    from search.tasks import task_of_study

    return task_of_study(store.study(study))


def cmd_front(args: argparse.Namespace) -> int:

    store, study = open_study(args)
    info = store.study(study)
    if (task := _task_of_stored(store, study)) is not None:  # a language-model study: perplexity against memory
        task.show_front(Console(), store, info, plans=args.plans)
        return 0
    rows = store.front(info.id)
    total = store.count(info.id)
    title = f"Pareto front of {study!r} ({len(rows)} of {total})"
    console = Console()
    console.print(front_table(title, rows, info.base_cost, info.spec.score, store.over_cap(info.id)))
    summary = latency_check(rows)
    if summary:
        console.print(summary)
    if args.plans:
        for r in rows:
            console.print(f"trial {r.trial_number}: {r.plan}", soft_wrap=True, markup=False, highlight=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:

    store, study = open_study(args)
    info = store.study(study)
    if (task := _task_of_stored(store, study)) is not None:
        task.show_status(Console(), store, info)
        return 0
    rows = store.candidates(info.id)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    front = store.front(info.id)
    pick = pick_within_cap(front, info.spec.score)  # as `front` and the report pick: on the front
    c = Console()
    c.print(f"study {study!r}: model {info.model_spec} on {info.data_spec}, budget {info.budget}")
    base_acc = info.base_accuracy
    c.print(f"base accuracy {base_acc:.4f}" if base_acc is not None else "base accuracy unknown")
    c.print(f"candidates: {len(rows)} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
    c.print(f"front: {len(front)} candidates")
    if pick is not None:
        best = pick.best
        c.print(
            f"best accuracy within budget: {best.accuracy:.4f} (trial {best.trial_number}, "
            f"MACs {pct(best.macs, info.base_cost.get('macs'))})"
        )
        if pick.cheaper:  # no winner inside the noise: the cheaper plan tied with it is the pick
            row = pick.row
            c.print(
                f"pick: trial {row.trial_number} ({row.accuracy:.4f}, MACs {pct(row.macs, info.base_cost.get('macs'))}"
                f"), the cheapest plan within the noise of trial {best.trial_number}"
            )

    for r in (r for r in rows if r.status is Status.RUNNING):
        trial = "-" if r.trial_number is None else r.trial_number
        what = f"candidate {r.id} (trial {trial}), attempt {r.attempts}"
        if r.worker is None:  # released by its worker (Ctrl-C)
            c.print(f"interrupted: {what}: {r.error or 'the next run evaluates it again'}")
        elif is_dead(r.worker):
            c.print(f"interrupted: {what}: worker {r.worker} is gone; the next run evaluates it again")
        else:
            c.print(f"running: {what} on {r.worker}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    if args.int8 and args.format != "onnx":
        raise UsageError("--int8 writes an ONNX model: add --format onnx")
    if args.format == "onnx" and args.config is None:
        raise UsageError("--format onnx checks the model on the study's data: give the study's CONFIG")
    if args.format == "onnx" and (missing := missing_onnx()):
        raise UsageError(f"--format onnx needs {', '.join(missing)}: pip install 'prunetune[onnx]'")
    _agreement_args(args)  # --min-agreement checked before anything is written
    store, study = open_study(args)
    out = out_dir(args.out)
    if (task := _task_of_stored(store, study)) is not None:  # its own exports (a language model: every format)
        for line in task.export(args.config, store, store.study(study), args.trial, out):
            print(line, flush=True)
        return 0
    with staged(out, stale=_ONNX_FILES, last="model.json") as staging:  # Ctrl-C: --out stays as it was
        export_candidate(store, study, staging, trial=args.trial)
    print(f"exported trial {args.trial} of {study!r} to {out} (plan.json, weights.safetensors, model.json)")
    print("load it with: from search import load_exported; model = load_exported(DIR)", flush=True)  # before ONNX
    if args.format == "onnx":
        _export_onnx(args, out)
    return 0


_ONNX_FILES = ("model.onnx", "model.int8.onnx", "onnx.json")  # what --format onnx adds to an export


def _export_onnx(args: argparse.Namespace, out: Path) -> None:
    """``model.onnx`` (and ``model.int8.onnx``) beside the export, and one line per check.

    Made in a staging folder holding a copy of the export; only the ONNX files and the
    updated ``model.json`` move in, so an interrupted run leaves the export without them.
    """
    from evaluators import load_data
    from search.operations._onnx import agreement_line, export_onnx

    cfg = load_config(args.config)
    data = load_data(cfg.data.spec, data_dir=cfg.data.data_dir, seed=cfg.data.seed)
    with staged(out, last="model.json") as staging:
        for name in ("plan.json", "model.json", "weights.safetensors"):
            shutil.copyfile(out / name, staging / name)
        checks = export_onnx(
            staging, data=data, int8=args.int8, threads=cfg.evaluate.threads or 1, **_agreement_args(args)
        )
        for name in ("plan.json", "weights.safetensors"):  # unchanged: the export's own stay
            (staging / name).unlink()
    onnx = checks["model.onnx"]
    print(f"model.onnx: {onnx['bytes']} bytes, outputs within {onnx['parity_max_abs']:.1e} of torch's")
    if args.int8:
        int8 = checks["model.int8.onnx"]
        print(f"model.int8.onnx: {int8['bytes']} bytes (analytic {checks['analytic_bytes']}), {int8['scheme']}")
        lat = checks["latency_batch1"]
        print("batch-1 latency (median ms): " + ", ".join(f"{k} {v['median_ms']:.3f}" for k, v in lat.items()))
    for name in ("model.onnx", "model.int8.onnx"):
        if name in checks:
            print(agreement_line(name, checks[name]["agreement"]))


def _agreement_args(args: argparse.Namespace) -> dict[str, Any]:
    """``--min-agreement`` and ``--allow-gap`` as :func:`search.operations._onnx.export_onnx` takes them."""
    if not 0.0 <= args.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement must be a fraction in [0, 1], got {args.min_agreement}")
    return {"tolerance": args.min_agreement, "allow_gap": args.allow_gap}


def cmd_report(args: argparse.Namespace) -> int:

    store, study = open_study(args)
    out = out_dir(args.out)
    if (task := _task_of_stored(store, study)) is not None:
        with staged(out) as staging:
            paths = task.write_report(store, store.study(study), staging)
        for p in paths:
            print(out / p.name)
        return 0
    config = load_config(args.config) if args.config is not None else None
    with staged(out) as staging:  # Ctrl-C: --out keeps its previous report, whole
        paths = write_study_report(store, study, staging, config=config, filters_trial=args.filters_trial)
    for p in paths:
        print(out / p.name)
    return 0
