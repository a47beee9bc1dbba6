"""The ``prunetune`` command line.

Heavy imports (torch, torch-pruning, fvcore, optuna, SQLAlchemy) happen inside
the commands, so ``prunetune --help`` answers at once. Bad input (a
:class:`spaces.PruneTuneError` or one of our ``ValueError``) ends with one line
on stderr and exit code 2; anything else, a bare ``TypeError`` included, is a
bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from spaces import Importance, Interrupted, Status, UsageError, check_interrupt, handle_signals

if TYPE_CHECKING:
    from rich.table import Table

    from storage import CandidateRow, StudyStore

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``prunetune: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"prunetune: error: {message} (see `{self.prog} --help`)\n")


def _pct(v: float | None, base: float | None) -> str:
    return f"{100 * v / base:.1f}%" if v is not None and base else "-"


def at_cap(rows: Sequence[CandidateRow]) -> CandidateRow | None:
    """The best of ``rows`` within the budget's cap: the most accurate of the longest-trained (``None``: none)."""
    scored = [r for r in rows if r.accuracy is not None]
    return max(scored, key=lambda r: (r.top_rung, r.accuracy or 0.0), default=None)


def _front_table(title: str, rows: Sequence[CandidateRow], base_cost: dict[str, Any]) -> Table:
    """The front as a table that fits the terminal: one line per candidate.

    Columns with no value in any row (``test acc`` before ``finalize``,
    ``latency ms`` when nothing was measured) are left out, and the plan
    summary is cut with an ellipsis to the width that is left; the whole plan
    is printed by ``prunetune front --plans`` and in the report's CSV.
    """
    from rich.table import Table
    from rich.text import Text

    from storage import plan_summary

    best = at_cap(rows)
    cells = {
        "trial": [f"{r.trial_number} *" if best is not None and r.id == best.id else str(r.trial_number) for r in rows],
        "val acc": [f"{r.accuracy:.4f}" if r.accuracy is not None else "-" for r in rows],
        "rung": ["-" if r.rungs is None else f"{r.rung} ({r.rungs[-1][0]} steps)" for r in rows],
        "test acc": [f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-" for r in rows],
        "MACs %": [_pct(r.macs, base_cost.get("macs")) for r in rows],
        "params %": [_pct(r.params, base_cost.get("params")) for r in rows],
        "latency ms": [f"{r.latency:.2f}" if r.latency is not None else "-" for r in rows],
    }
    shown = {col: values for col, values in cells.items() if col == "trial" or any(v != "-" for v in values)}
    caption = (
        "val: validation accuracy (selected on); test: after `prunetune finalize`; "
        "whole plans: `prunetune front --plans`"
    )
    if best is not None:
        caption = f"* the best within the budget's cap (at the highest rung); {caption}"
    table = Table(title=title, caption=caption)
    for col in shown:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("plan", justify="left", ratio=1, min_width=12)  # the only column that gives way
    for i, r in enumerate(rows):
        plan = Text(plan_summary(r.plan), no_wrap=True, overflow="ellipsis")
        table.add_row(*(values[i] for values in shown.values()), plan)
    return table


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from search._config import config_flags

    out: dict[str, Any] = {}
    for key, _help, is_list in config_flags():
        value = getattr(args, key, None)
        if value is not None:
            out[key] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from search._config import load_config
    from search._study import RunResult, Search

    cfg = load_config(args.config, _overrides(args))
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
            best = max(((r.top_rung, r.accuracy) for r in front if r.accuracy is not None), default=(0, None))[1]
            info = f"best {best:.4f} within budget, front {len(front)}" if best is not None else "no result yet"
            bar.update(task, completed=min(res.total, target), info=info)

        try:
            res = search.run(update)
        except KeyboardInterrupt as exc:  # hand the interrupted candidate to the next run at once
            by_user = not isinstance(exc, Interrupted) or exc.signum == signal.SIGINT
            p.store.release(p.study_id, search.worker, "interrupted by the user" if by_user else str(exc))
            raise
    for line in res.events:
        err.print(line)
    if res.stopped:
        err.print(f"stopped early: {res.stopped}")
    title = f"Pareto front of {res.study!r} ({len(res.front)} of {res.total})"
    out.print(_front_table(title, res.front, res.base_cost))
    t = res.timings.per_candidate()
    out.print(
        f"this run: {res.evaluated} evaluated, {res.duplicates} duplicate plans skipped, {res.retried} retried; "
        "seconds per candidate: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items())
    )
    out.print(f"finalize one (long fine-tune, test accuracy) with: prunetune finalize {args.config} --trial N")
    return 0


def _cmd_finalize(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from search._config import load_config
    from search._finalize import finalize

    cfg = load_config(args.config, _overrides(args))
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


def _open_study(args: argparse.Namespace) -> tuple[StudyStore, str]:
    from search._config import load_config
    from storage import StudyStore

    url, study = args.storage, args.study
    if args.config is not None:
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


def _cmd_front(args: argparse.Namespace) -> int:
    from rich.console import Console

    store, study = _open_study(args)
    info = store.study(study)
    rows = store.front(info.id)
    total = store.count(info.id)
    title = f"Pareto front of {study!r} ({len(rows)} of {total})"
    console = Console()
    console.print(_front_table(title, rows, info.base_cost))
    if args.plans:
        for r in rows:
            console.print(f"trial {r.trial_number}: {r.plan}", soft_wrap=True, markup=False, highlight=False)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    store, study = _open_study(args)
    info = store.study(study)
    rows = store.candidates(info.id)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    done = [r for r in rows if r.status is Status.COMPLETE and r.accuracy is not None]
    best = max(done, key=lambda r: (r.top_rung, r.accuracy or 0.0), default=None)
    c = Console()
    c.print(f"study {study!r}: model {info.model_spec} on {info.data_spec}, budget {info.budget}")
    base_acc = info.base_accuracy
    c.print(f"base accuracy {base_acc:.4f}" if base_acc is not None else "base accuracy unknown")
    c.print(f"candidates: {len(rows)} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
    c.print(f"front: {len(store.front(info.id))} candidates")
    if best is not None:
        c.print(
            f"best accuracy within budget: {best.accuracy:.4f} (trial {best.trial_number}, "
            f"MACs {_pct(best.macs, info.base_cost.get('macs'))})"
        )
    from search._candidate import is_dead

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


def _cmd_export(args: argparse.Namespace) -> int:
    from search._export import export_candidate

    store, study = _open_study(args)
    out = export_candidate(store, study, args.out, trial=args.trial)
    print(f"exported trial {args.trial} of {study!r} to {out} (plan.json, weights.safetensors, model.json)")
    print("load it with: from search import load_exported; model = load_exported(DIR)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from search._config import load_config
    from search._export import out_dir
    from search._report import write_study_report

    store, study = _open_study(args)
    config = load_config(args.config) if args.config is not None else None
    for p in write_study_report(store, study, out_dir(args.out), config=config, filters_trial=args.filters_trial):
        print(p)
    return 0


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="the run's TOML config (gives the storage URL and study name)")
    p.add_argument("--storage", help="storage URL (default: the config's, else sqlite:///prunetune.db)")
    p.add_argument("--study", help="study name (default: the config's, or the only study in the store)")


def _config_flag_args(p: argparse.ArgumentParser) -> None:
    """One ``--section.key`` flag per config key; the key's description is its help.

    argparse formats help strings with ``%``, so a description that says "40%"
    must reach it as "40%%".
    """
    from search._config import config_flags

    for key, text, is_list in config_flags():
        help_text = text.replace("%", "%%") if text else f"overrides [{key.partition('.')[0]}] {key.partition('.')[2]}"
        p.add_argument(f"--{key}", dest=key, metavar="LIST" if is_list else "VALUE", help=help_text)


def _parser() -> argparse.ArgumentParser:
    from search._inspect import budget_arg, cmd_inspect, ratios_arg, shape_arg

    p = _Parser(prog="prunetune", description="Automated compression search for PyTorch CNNs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ins = sub.add_parser("inspect", help="show a model's prunable groups and costs")
    ins.add_argument("--model", required=True, help="zoo:<name>, torchvision:<name> or package.module:factory")
    ins.add_argument("--weights", help="a .safetensors file or a weights-only torch file")
    ins.add_argument(
        "--input", type=shape_arg, default=(1, 3, 224, 224), help="example input shape (default 1,3,224,224)"
    )
    ins.add_argument(
        "--ratios", type=ratios_arg, default=[0.3, 0.5], help="uniform prune ratios to cost (default 0.3,0.5)"
    )
    ins.add_argument("--importance", choices=[i.value for i in Importance], default=Importance.L1.value)
    ins.add_argument("--round-to", type=int, default=1)
    ins.add_argument(
        "--budget",
        type=budget_arg,
        help="show the allocator's plan for this budget, e.g. macs=40%%,params=50%%,bytes=8MB",
    )
    ins.set_defaults(func=cmd_inspect)
    run = sub.add_parser(
        "run",
        help="run (or resume) a compression search from a TOML config",
        description="Every config key can be overridden: --section.key VALUE (lists comma-separated).",
    )
    run.add_argument("config", help="the run's TOML config, e.g. examples/digits.toml")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _config_flag_args(run)
    run.set_defaults(func=_cmd_run)
    front = sub.add_parser("front", help="show a study's Pareto front")
    _study_args(front)
    front.add_argument("--plans", action="store_true", help="also print each member's whole plan (JSON)")
    front.set_defaults(func=_cmd_front)
    status = sub.add_parser("status", help="show a study's progress")
    _study_args(status)
    status.set_defaults(func=_cmd_status)
    exp = sub.add_parser("export", help="write a candidate's plan.json, weights.safetensors and model.json")
    _study_args(exp)
    exp.add_argument("--trial", type=int, required=True, help="the trial number (see `prunetune front`)")
    exp.add_argument("--out", required=True, help="output directory")
    exp.set_defaults(func=_cmd_export)
    fin = sub.add_parser(
        "finalize",
        help="re-train chosen candidates with the long recipe, measure test accuracy, store and export them",
        description="Every config key can be overridden: --section.key VALUE (lists comma-separated).",
    )
    fin.add_argument("config", help="the run's TOML config")
    fin.add_argument("--trial", type=int, action="append", help="a trial number (repeat for several)")
    fin.add_argument("--front", action="store_true", help="every candidate of the Pareto front")
    fin.add_argument("--steps", type=int, help="fine-tune steps (default: evaluate.final_steps)")
    fin.add_argument("--out", help="export each to OUT/trial-N as well")
    _config_flag_args(fin)
    fin.set_defaults(func=_cmd_finalize)
    rep = sub.add_parser("report", help="write CSV, Markdown and HTML (report.html) reports of a study")
    _study_args(rep)
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--filters-trial", type=int, help="front member whose pruned filters are shown (default: best)")
    rep.set_defaults(func=_cmd_report)
    from search._service_cli import add_service_commands

    add_service_commands(sub)
    return p


def _glue_dash_values(argv: Sequence[str]) -> list[str]:
    """``--budget.bytes -5MB`` as ``--budget.bytes=-5MB``: argparse would take ``-5MB`` for an option."""
    out: list[str] = []
    for tok in argv:
        prev = out[-1] if out else ""
        if (
            prev.startswith("--")
            and "=" not in prev
            and tok.startswith("-")
            and not tok.startswith("--")
            and tok != "-h"
        ):
            out[-1] = f"{prev}={tok}"
        else:
            out.append(tok)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit codes and messages are those of :mod:`search._errors`."""
    from search._errors import EXIT_INTERRUPTED, REPORT_A_BUG, explain

    args = _parser().parse_args(_glue_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        with handle_signals():  # SIGINT/SIGTERM stop the command at its next safe point
            code = int(args.func(args))
            check_interrupt()  # a signal after the last safe point still ends in 130 / 143
        return code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted) and exc.signum != signal.SIGINT:
            print(f"prunetune: {exc}; rerun the same command to resume", file=sys.stderr)
            return exc.exit_code
        print("prunetune: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        known = explain(exc)
        if known is None:
            traceback.print_exc()
            print(REPORT_A_BUG, file=sys.stderr)
            return 1
        print(f"prunetune: error: {known[1]}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    raise SystemExit(main())
