"""The benchmark that decides: the search against the baselines, every model finalized the same way.

    .venv/bin/python bench/bench_search.py                       # Fashion-MNIST, 15/30/50 %, seeds 0,1,2
    .venv/bin/python bench/bench_search.py --budgets 0.5 --seeds 0  # one budget, one seed
    .venv/bin/python bench/bench_search.py --data digits --epochs 30
    .venv/bin/python bench/bench_search.py --smoke              # CI's size: digits, one epoch, 50 %, 3 candidates

One ResNet-20 is trained on the **train** split (cached). For each MAC budget
and seed, the compressed models get exactly the same final treatment —
:func:`search.train_final`: BN recalibration, ``--final-steps`` fine-tune steps
distilled from the original (weight ``--final-kd``, ``evaluate.final_kd_weight``'s
default 0.5; 0 recovers on the labels alone), the seed's data order — and are
measured on the **test** split, which nothing selects on:

(a) **torch-pruning uniform**: ``tp.pruner.MagnitudePruner`` (group L1), one ratio for
    every layer, bisected until the measured MACs meet the budget;
(b) **torch-pruning global**: the same with ``global_pruning=True``;
(h) **ModelOpt FastNAS**: NVIDIA ModelOpt's one line, ``mtp.prune(model, mode="fastnas",
    constraints={"flops": ...})``, its score validation accuracy on ``--max-val`` validation
    images, its channel granularity ours, its constraint bisected onto our measured MACs
    (``bench/_fastnas.py``; needs the ``peers`` extra);
(c) **PruneTune uniform**: one prune ratio for every group, channels kept by the
    study's default criterion (``space.importance``), ``space.fit`` onto the budget;
(d) **allocator**: ``space.allocate`` (pruning only, valued by the measured sensitivity the
    studies' allocator seed uses), repaired with ``fit``;
(e) **random search, best of N**: a ``prunetune`` study with the random sampler and
    no seed plans;
(f) **the search, best of N**: a ``prunetune`` study with the defaults (TPE, the
    allocator's, the uniform and the global-ranking plan first); ``stages`` and ``blend``
    also run it with ``space.sample_by = "stages"`` and ``"blend"``;
(g) ``depth``: the same study with ``[space.depth]`` on (up to half the blocks
    dropped, the pruning fitted around them): depth + width against width alone;
    ``distill``: the default study with its rungs and re-scoring distilled from the
    original (``evaluate.kd_weight = 0.5``) against the default's plain fine-tunes;
    ``kl``: the default study ranking, promoting and picking by the divergence from
    the original on a held-out pool of training images (``evaluate.score = "kl"``).

Both studies use ``search.floor = "cap"`` (the question is the best model at the
budget), the same successive-halving rungs (``--rungs``: fine-tune steps, the
best third promoted; lower rungs score on ``--max-val`` validation images, the
top rung on the whole validation split) and the same re-scoring of the best
``--rescore-top`` at four times the top rung's steps (and those the last of
them does not beat beyond its noise). "Best of N" is the study's pick,
:func:`storage.pick_within_cap`: the most accurate on validation among those
trained longest, or the cheapest plan within its noise. The second table gives, per study, how many candidates it
needed to come within 0.3 points (of validation accuracy at the top rung) of
its final best, and how many the search (and every other study beside random
search) needed to reach random search's final best. ``--curve`` also runs the
default study (floor a quarter of the cap) to measure what spreading the
candidates over the cost range costs at the cap.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from _fastnas import fastnas_at  # bench/, beside this script
from _shared import (  # bench/, beside this script
    SMOKE,
    add_search_args,
    machine,
    parse_search_args,
    parser,
    print_table,
    study_overrides,
    torch_pruning_at,
)
from torch import nn

from search import Search, load_config
from search.operations._finalize import train_final
from search.preparation._prepare import allocator_sensitivity
from spaces import Budget, Plan, Status, measure_cost
from storage import CandidateRow, pick_within_cap


def best_of(rows: list[CandidateRow], score: str) -> CandidateRow:
    """The study's pick among its front's ``rows`` (:func:`storage.pick_within_cap`): the best-scored on
    validation (``evaluate.score``) among the candidates trained longest, or the cheapest plan within its
    noise (runs before 2026-12-07 16:30 took the best-scored of all candidates)."""
    pick = pick_within_cap([r for r in rows if r.status is Status.COMPLETE], score)
    if pick is None:
        raise RuntimeError("the study finished no candidate")
    return pick.row


def _by_id(rows: list[CandidateRow]) -> list[CandidateRow]:
    return sorted((r for r in rows if r.status is Status.COMPLETE and r.accuracy is not None), key=lambda r: r.id)


def to_reach(rows: list[CandidateRow], steps: int, target: float) -> int | None:
    """Candidates (in the order they were created) until one scores ``target`` after ``steps`` (``None``: never)."""
    for i, r in enumerate(_by_id(rows), 1):
        if (r.accuracy_after(steps) or 0.0) >= target:
            return i
    return None


def final_best(rows: list[CandidateRow], steps: int) -> float:
    """The best validation accuracy after ``steps`` fine-tune steps (the top rung of successive halving)."""
    return max(r.accuracy_after(steps) or 0.0 for r in _by_id(rows))


STUDIES: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("(e) random search", {"search.sampler": "random", "search.seed_plans": []}),
    "search": ("(f) search", {}),
    "stages": ("(f) search, sample_by = stages", {"space.prune.sample_by": "stages"}),
    "blend": ("(f) search, sample_by = blend", {"space.prune.sample_by": "blend"}),
    "curve": ("(f) search with the default floor", {}),
    "depth": ("(g) search with depth + width", {"space.depth.max_share": 0.5}),
    "distill": ("(f) search, rungs distilled", {"evaluate.kd_weight": 0.5}),
    "kl": ("(f) search, score = kl (the teacher's pool)", {"evaluate.score": "kl"}),
}


def study(args: argparse.Namespace, tmp: Path, budget: float, seed: int, arm: str) -> Search:
    overrides = {
        **study_overrides(args, tmp, f"{arm}-{budget}-{seed}"),
        "budget.macs": f"{budget:.0%}",
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
        "evaluate.rescore_top": args.rescore_top,
        "search.candidates": args.candidates,
        "search.seed": seed,
        "evaluate.final_kd_weight": args.final_kd,
        **STUDIES[arm][1],
    }
    if arm != "curve":
        overrides["search.floor"] = "cap"
    return Search(load_config(None, overrides)).prepare()


def one_shot(p: Any, b: float, args: argparse.Namespace, workdir: Path) -> dict[str, nn.Module]:
    """The one-shot arms at budget ``b``: torch-pruning's two, FastNAS, PruneTune's uniform plan, the allocator's."""
    space, example = p.space, p.data.example_inputs(1)
    budget = Budget(macs=f"{b:.0%}")
    limit = budget.absolute(p.base_cost)["macs"]
    sens = allocator_sensitivity(p)  # what the studies' allocator seeds are valued by
    val = list(p.data.val_loader(args.batch_size, args.max_val))  # what the studies' lower rungs score on
    train = p.data.train_loader(args.batch_size, p.config.evaluate.seed)
    peers = {}
    if find_spec("modelopt") is not None:
        peers["(h) ModelOpt FastNAS"] = fastnas_at(p.base_model, example, limit, train, val, workdir)
    else:
        print("(h) ModelOpt FastNAS skipped: nvidia-modelopt is not installed (pip install -e '.[peers]')", flush=True)
    return {
        "(a) torch-pruning uniform": torch_pruning_at(p.base_model, example, limit, global_pruning=False),
        "(b) torch-pruning global": torch_pruning_at(p.base_model, example, limit, global_pruning=True),
        **peers,
        f"(c) PruneTune uniform ({p.config.space.importance.value})": space.apply(
            space.fit(space.uniform_plan(0.0), budget)
        ),
        "(d) allocator": space.apply(space.fit(space.allocate(budget, rank=False, sensitivity=sens).plan, budget)),
    }


def run_seed(args: argparse.Namespace, b: float, seed: int, log: dict[str, Any]) -> None:
    """One budget and seed: the studies, then every arm finalized and tested; appends to ``log``."""
    with tempfile.TemporaryDirectory() as td:
        runs = {}
        for arm in [a for a in args.searches.split(",") if a not in ("", "none")]:
            t = time.perf_counter()
            runs[arm] = study(args, Path(td), b, seed, arm)
            runs[arm].run()
            log["walls"].setdefault(arm, []).append(time.perf_counter() - t)
        # --searches none: the one-shot arms alone, on a study prepared (its base model, space and data) but not run
        p = next(iter(runs.values())).prepared if runs else study(args, Path(td), b, seed, "search").prepared
        models = one_shot(p, b, args, Path(td)) if args.one_shot else {}
        top = args.rungs[-1]
        cands = {arm: s.prepared.store.candidates(s.prepared.study_id) for arm, s in runs.items()}
        for arm, rows in cands.items():
            pr = runs[arm].prepared
            pick = best_of(pr.store.front(pr.study_id), runs[arm].cfg.evaluate.score)  # on the front, as the CLI
            models[f"{STUDIES[arm][0]}, best of {args.candidates}"] = p.space.apply(Plan.from_json(pick.plan))
            log["blocks"].setdefault(arm, []).append(len(Plan.from_json(pick.plan).entries("depth")))
            log["within"].setdefault(arm, []).append(to_reach(rows, top, final_best(rows, top) - 0.003))
        for arm in (a for a in cands if a != "random" and "random" in cands):
            log["reach"].setdefault(arm, []).append(to_reach(cands[arm], top, final_best(cands["random"], top)))
        example = p.data.example_inputs(1)
        for name, m in models.items():
            _, test = train_final(p, m.to(p.device), steps=args.final_steps, seed=seed)
            log["accs"].setdefault(name, []).append(float(test or 0.0))
            log["cost"].setdefault(name, []).append(measure_cost(m.cpu(), example).macs / p.base_cost.macs)
    line = ", ".join(f"{k} {v[-1]:.4f} ({100 * log['cost'][k][-1]:.1f}% MACs)" for k, v in log["accs"].items())
    print(f"budget {b:.0%} seed {seed}: {line}; within 0.3 {log['within']}; search reaches random's best at "
          f"{log['reach']}", flush=True)  # fmt: skip


def main() -> None:
    ap = parser(__doc__, budgets="0.15,0.3,0.5")
    add_search_args(ap)
    ap.add_argument(
        "--searches", default="random,search", help=f"which studies to run, of {', '.join(STUDIES)} (none: no study)"
    )
    ap.add_argument(
        "--no-one-shot", dest="one_shot", action="store_false", help="skip the one-shot arms (a) to (d): studies only"
    )
    ap.add_argument(
        "--final-kd",
        type=float,
        default=0.5,
        help="distillation weight of every arm's final fine-tune (0: plain recovery on the labels)",
    )
    args, seeds = parse_search_args(ap, {**SMOKE, "budgets": "0.5"})
    where = machine()
    rows: list[list[str]] = []
    speed: list[list[str]] = []
    t_all = time.perf_counter()
    for b in [float(x) for x in args.budgets.split(",")]:
        log: dict[str, Any] = {"accs": {}, "cost": {}, "within": {}, "reach": {}, "walls": {}, "blocks": {}}
        for seed in seeds:
            run_seed(args, b, seed, log)
        rows += table_rows(b, log)
        for arm, n in log["within"].items():
            reach = ", ".join(map(str, log["reach"].get(arm, [])))
            blocks, wall = ", ".join(map(str, log["blocks"][arm])), f"{statistics.mean(log['walls'][arm]):.0f}"
            speed.append([f"{b:.0%}", arm, ", ".join(map(str, n)), reach, blocks, wall])
    print(
        f"\n# {args.data} ResNet-20; test accuracy after BN recalibration + {args.final_steps} fine-tune steps "
        f"(distillation weight {args.final_kd}), seeds {seeds} (mean ± std, %); "
        f"searches: {args.candidates} candidates, rungs {args.rungs}, "
        f"{args.max_val} validation images below the top rung, the best {args.rescore_top} re-scored; {where}; "
        f"{time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(["MAC budget", "method", "MACs", "test accuracy", "vs best of (a), (b), (h)"], rows)
    print()
    print_table(
        ["MAC budget", "study", "candidates to within 0.3 points of its best (per seed)",
         "the search's candidates to random search's best", "blocks its pick drops", "s per study"],
        speed,
    )  # fmt: skip


def table_rows(b: float, log: dict[str, Any]) -> list[list[str]]:
    """The table's rows for budget ``b``: mean ± std per arm, and the gain over the best one-liner (torch-pruning's
    two and FastNAS)."""
    accs, cost = log["accs"], log["cost"]
    arms = ("(a) torch-pruning uniform", "(b) torch-pruning global", "(h) ModelOpt FastNAS")
    libraries = [statistics.mean(accs[k]) for k in arms if k in accs]
    better = max(libraries) if libraries else 0.0  # --no-one-shot: no library arm to compare with
    rows = []
    for name, vals in accs.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        gain = f"{100 * (statistics.mean(vals) - better):+.2f}" if libraries else "—"  # no one-liner ran
        rows.append(
            [f"{b:.0%}", name, f"{100 * statistics.mean(cost[name]):.1f}%",
             f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}", gain]
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
