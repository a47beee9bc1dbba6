"""The ``prunetune`` command line.

Heavy imports (torch, torch-pruning, fvcore, optuna, SQLAlchemy) happen inside
the commands, so ``prunetune --help`` answers at once. Bad input (a
:class:`spaces.PruneTuneError` or one of our ``ValueError``) ends with one line
on stderr and exit code 2; anything else, a bare ``TypeError`` included, is a
bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from search._exit_codes import EXIT_INTERRUPTED, REPORT_A_BUG, explain
from search.cli import _commands as commands
from search.cli._inspect import budget_arg, cmd_inspect, ratios_arg, shape_arg
from search.cli._inspect_decoder import positive_int
from search.cli._profile_command import add_profile_command
from search.cli._service_commands import add_service_commands
from spaces import Importance, Interrupted, check_interrupt, handle_signals, interrupt_requested

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``prunetune: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"prunetune: error: {message} (see `{self.prog} --help`)\n")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="the run's TOML config (gives the storage URL and study name)")
    p.add_argument("--storage", help="storage URL (default: the config's, else sqlite:///prunetune.db)")
    p.add_argument("--study", help="study name (default: the config's, or the only study in the store)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prunetune", description="Automated compression search for PyTorch CNNs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_inspect(sub)
    _add_run(sub)
    _add_readers(sub)
    _add_finalize(sub)
    _add_report(sub)
    add_profile_command(sub)
    add_service_commands(sub)
    return p


def _add_inspect(sub: Any) -> None:
    ins = sub.add_parser("inspect", help="show a model's prunable groups and costs")
    ins.add_argument(
        "--model",
        required=True,
        help="zoo:<name>, torchvision:<name>, timm:<name>, package.module:factory, or a language model: "
        "hf:<directory> or hf-tiny:<family>",
    )
    ins.add_argument("--weights", help="a .safetensors file or a weights-only torch file")
    ins.add_argument(
        "--input", type=shape_arg, default=(1, 3, 224, 224), help="example input shape (default 1,3,224,224)"
    )
    ins.add_argument(
        "--ratios", type=ratios_arg, default=[0.3, 0.5], help="uniform prune ratios to cost (default 0.3,0.5)"
    )
    ins.add_argument("--importance", choices=[i.value for i in Importance], default=Importance.GROUP_L2.value)
    ins.add_argument("--round-to", type=int, default=1)
    ins.add_argument(
        "--budget",
        type=budget_arg,
        help="show the allocator's plan for this budget, e.g. macs=40%%,params=50%%,bytes=8MB",
    )
    ins.add_argument(
        "--context", type=positive_int, default=2048, help="language models: the KV cache's tokens (default 2048)"
    )
    ins.add_argument("--batch", type=positive_int, default=1, help="language models: the KV cache's sequences")
    ins.add_argument(
        "--memory", help="language models: the one-rule plans at this memory budget (weights + KV cache), e.g. 50%%"
    )
    ins.add_argument(
        "--measure",
        action="store_true",
        help="language models: also measure each plan's prefill (of --context tokens) and decode (32 tokens with "
        "the cache) tokens per second on this machine (torch, batch 1)",
    )
    ins.set_defaults(func=cmd_inspect)


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run (or resume) a compression search from a TOML config",
        description="Every config key can be overridden: --section.key VALUE (lists comma-separated).",
    )
    run.add_argument("config", help="the run's TOML config, e.g. examples/digits.toml")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    commands.add_config_flags(run)
    run.set_defaults(func=commands.cmd_run)


def _add_readers(sub: Any) -> None:
    """``front``, ``status`` and ``export``: commands that read a study."""
    front = sub.add_parser("front", help="show a study's Pareto front")
    _study_args(front)
    front.add_argument("--plans", action="store_true", help="also print each member's whole plan (JSON)")
    front.set_defaults(func=commands.cmd_front)
    status = sub.add_parser("status", help="show a study's progress")
    _study_args(status)
    status.set_defaults(func=commands.cmd_status)
    exp = sub.add_parser("export", help="write a candidate's plan.json, weights.safetensors and model.json")
    _study_args(exp)
    exp.add_argument("--trial", type=int, required=True, help="the trial number (see `prunetune front`)")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="onnx: also model.onnx (torch's exporter, checked against torch within 1e-4); needs CONFIG for data",
    )
    exp.add_argument(
        "--int8",
        action="store_true",
        help="with --format onnx: also model.int8.onnx (the plan's quantized layers: weights-only ones as int8/int4 "
        "DequantizeLinear, ones with 8-bit inputs by ONNX Runtime's static QDQ; a plan without bits: every layer, "
        "calibrated on training images) and its checks in onnx.json: bytes, agreement on validation, latency",
    )
    exp.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        metavar="FRACTION",
        help="with --format onnx: the top-1 agreement with the scored candidate on the validation split below "
        "which the export refuses (default 0.99)",
    )
    exp.add_argument("--allow-gap", action="store_true", help="write the ONNX export even below --min-agreement")
    exp.set_defaults(func=commands.cmd_export)


def _add_finalize(sub: Any) -> None:
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
    commands.add_config_flags(fin)
    fin.set_defaults(func=commands.cmd_finalize)


def _add_report(sub: Any) -> None:
    rep = sub.add_parser("report", help="write CSV, Markdown and HTML (report.html) reports of a study")
    _study_args(rep)
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--filters-trial", type=int, help="front member whose pruned filters are shown (default: best)")
    rep.set_defaults(func=commands.cmd_report)


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


_RESUMES = {"run", "finalize", "worker"}  # commands whose rerun picks up where the interrupted one stopped


def _run(args: argparse.Namespace) -> int:
    """Run the command; an error raised after a stop was requested is the stop's doing, and ends as one.

    A signal that lands inside an import can leave a module half-initialized
    when a library swallows the :class:`Interrupted` (numpy's C core, imported by
    torch, then refuses a second load with ``ImportError: cannot load module more
    than once per process``). The user asked the command to stop: it stops with
    130 / 143 and the usual line, and the rerun starts in a fresh process.
    """
    try:
        return int(args.func(args))
    except Exception as exc:
        signum = interrupt_requested()
        if signum is None:
            raise
        raise Interrupted(signum) from exc


def _interrupted(exc: KeyboardInterrupt, command: str) -> int:
    """The one line an interrupted command ends with (stdout flushed first, so nothing printed is lost)."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    hint = "; rerun the same command to resume" if command in _RESUMES else ""
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stdout: the message still goes out
        sys.stdout.flush()
    print(f"prunetune: {what}{hint}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum


def _end_now(code: int) -> NoReturn:
    """End an interrupted ``prunetune`` at once: its output is flushed and the exit handlers ran (a Ray driver
    disconnects), but the interpreter's teardown, a last garbage collection of a heap of torch objects that
    takes seconds on a busy machine, is skipped."""
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; exit codes and messages are those of :mod:`search._exit_codes`."""
    args = _parser().parse_args(_glue_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        with handle_signals(keep=argv is None):  # SIGINT/SIGTERM stop the command at once or at its next safe point
            code = _run(args)
            check_interrupt()  # a signal after the last safe point still ends in 130 / 143
        return code
    except KeyboardInterrupt as exc:
        code = _interrupted(exc, args.command)
        if argv is None:
            _end_now(code)
        return code
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
