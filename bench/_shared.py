"""What the Fashion-MNIST benchmarks share: the study they prepare, and torch-pruning's one line at a budget."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces import measure_cost


def parser(doc: str, *, budgets: str) -> argparse.ArgumentParser:
    """The arguments every Fashion-MNIST benchmark takes (its own are added after)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=3, help="baseline epochs on the train split (cached)")
    ap.add_argument("--budgets", default=budgets, help="MAC budgets, fractions of the base model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--final-steps", type=int, default=300, help="distilled fine-tune steps of the final recipe")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1: leave a core to other work)")
    ap.add_argument(
        "--score",
        choices=("accuracy", "loss", "kl"),
        help="the studies' evaluate.score (default: the config's default)",
    )
    return ap


SMOKE_HELP = "tiny sizes, the same code path (what CI runs: seconds, and nothing written outside a temp dir)"

# The smoke size of every benchmark built on :func:`parser`: the digits ResNet-20 (trained for one epoch in a
# temp dir), one budget, one seed, a few candidates and a few fine-tune steps, one thread.
SMOKE = {
    "data": "digits",
    "epochs": 1,
    "batch_size": 32,
    "final_steps": 5,
    "seeds": "0",
    "candidates": 3,
    "rungs": "2,4",
    "max_val": 100,
    "rescore_top": 1,
    "threads": 1,  # small models on a shared runner: a second thread buys little and waits for a core
}

# What a smoke run's studies measure with less: BN recalibration and sensitivity on fewer images.
SMOKE_STUDY = {"evaluate.bn_batches": 2, "space.calibration_samples": 32}


def parse(ap: argparse.ArgumentParser, smoke: Mapping[str, Any]) -> argparse.Namespace:
    """Parse the command line with a ``--smoke`` flag: with it, ``smoke`` replaces the defaults (flags given
    on the command line still win)."""
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--smoke", action="store_true")
    if pre.parse_known_args()[0].smoke:
        ap.set_defaults(**smoke)
    return ap.parse_args()


def add_search_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark that runs studies: seeds, candidates, rungs, scoring images, re-scoring."""
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--rungs", default="50,200", help="fine-tune steps per rung of the searches")
    ap.add_argument("--max-val", type=int, default=2000, help="validation images below the top rung")
    ap.add_argument("--rescore-top", type=int, default=3, help="the best N re-scored at 4x the top rung's steps")


def parse_search_args(
    ap: argparse.ArgumentParser, smoke: Mapping[str, Any] = SMOKE
) -> tuple[argparse.Namespace, list[int]]:
    """Parse (rungs as ints, ``--smoke`` as :func:`parse`), set torch's threads; the arguments and the seeds."""
    import torch

    args = parse(ap, smoke)
    args.rungs = [int(s) for s in args.rungs.split(",")]
    torch.set_num_threads(args.threads)
    return args, [int(s) for s in args.seeds.split(",")]


def temp_dir() -> Path:
    """A new temp dir, removed when the benchmark exits (its store, and with ``--smoke`` its baseline)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="prunetune-bench-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def machine() -> str:
    """This machine, as the tables' headers say it."""
    import os
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, CPU"


def study_overrides(args: argparse.Namespace, tmp: Path, study: str) -> dict[str, Any]:
    """The config of a benchmark's study: the cached ResNet-20 baseline of ``args.data`` (under ``tmp`` with
    ``--smoke``), a SQLite store in ``tmp``."""
    return {
        "model.spec": "zoo:resnet20",
        "model.train_epochs": args.epochs,
        "model.train_batch_size": 128,
        "data.spec": args.data,
        "budget.macs": "50%",
        "evaluate.batch_size": args.batch_size,
        "evaluate.bn_batches": 10,
        "evaluate.eval_every": 0,
        "evaluate.threads": args.threads,
        "search.study": study,
        "search.artifacts_dir": str(tmp / "artifacts") if getattr(args, "smoke", False) else "artifacts",
        "storage.url": f"sqlite:///{tmp / 'bench.db'}",
        **({"evaluate.score": args.score} if getattr(args, "score", None) else {}),
        **(SMOKE_STUDY if getattr(args, "smoke", False) else {}),
    }


def torch_pruning_at(base: nn.Module, example: torch.Tensor, macs_limit: float, *, global_pruning: bool) -> nn.Module:
    """torch-pruning's ``MagnitudePruner`` (group L1 importance), uniform or global, at the smallest ratio whose
    measured MACs meet the limit (bisection; it floors kept counts, so it lands a little below).

    Call it after building a :class:`spaces.ModelSpace`: tracing one installs the
    compatibility shim that torch-pruning needs on current PyTorch.
    """
    import torch_pruning as tp

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(base).cpu().eval()
        fc = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        pruner = tp.pruner.MagnitudePruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=global_pruning,
            pruning_ratio=ratio,
            max_pruning_ratio=0.95,
            ignored_layers=fc[-1:],
        )
        pruner.step()
        return m

    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if measure_cost(m, example).macs <= macs_limit:
            hi, best = mid, m
        else:
            lo = mid
    if best is None:
        raise RuntimeError("torch-pruning never met the budget")
    return best


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, as the README holds it."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
