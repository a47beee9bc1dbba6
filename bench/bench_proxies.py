"""Do the search's scores rank plans as the finalized models' test accuracy does? (EagleEye's question.)

    .venv/bin/python bench/bench_proxies.py                     # Fashion-MNIST, 20 plans at 50 % and 15 %
    .venv/bin/python bench/bench_proxies.py --plans 8 --budgets 0.5 --final-steps 100   # a quick look
    .venv/bin/python bench/bench_proxies.py --smoke        # CI's size: digits, one epoch, 4 plans at 50 %

The Fashion-MNIST ResNet-20 of ``bench_search.py`` (trained on the train
split, cached). At each MAC budget, ``--plans`` random per-group pruning plans
(what a sampler proposes) are fitted to the budget and scored exactly as a
study scores them — :meth:`CandidateRunner._rung`: BN recalibration, the
rung's fine-tune steps continuing from the last rung, the same validation
subset for every plan below the top rung (``--max-val`` images) and the whole
validation split at the top — recording each rung's accuracy and
cross-entropy, and those of the re-scoring rung (``evaluate.rescore_top``: on
to four times the top rung's steps, the whole validation split). Then every plan is rebuilt from the base weights and
finalized (:func:`search.train_final`: ``--final-steps`` distilled steps) and
measured on the **test** split, which no score reads. Beside the labelled
scores, the teacher-referenced ones (:class:`evaluators.TeacherPool`): the
dense model's outputs on ``--pool`` training images held out of every
fine-tune, and each plan's KL divergence from them (negated) and top-1
agreement with them, at every rung. The table gives the
Spearman correlation of each score with that test accuracy (loss negated, so
higher is better for every score): the score that picks the winner should
reach 0.8.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from _shared import SMOKE, machine, parse, parser, print_table, study_overrides, temp_dir  # bench/, beside this script
from scipy.stats import spearmanr

from evaluators import TeacherPool
from search import Search, load_config
from search.operations._finalize import train_final
from spaces import Budget, Plan


def _search(args: argparse.Namespace, tmp: Path) -> Search:
    overrides = {
        **study_overrides(args, tmp, "proxies"),
        "evaluate.rungs": args.rungs,
        "evaluate.max_val_samples": args.max_val,
    }
    return Search(load_config(None, overrides)).prepare()


def _plans(s: Search, budget: Budget, n: int, seed: int) -> list[Plan]:
    """``n`` random per-group plans fitted to ``budget`` (distinct)."""
    space = s.prepared.space
    rng = random.Random(seed)
    out: dict[str, Plan] = {}
    while len(out) < n:
        raw = Plan({g.id: rng.uniform(0.0, 0.9) for g in space.groups if rng.random() < 0.8})
        plan = space.fit(raw, budget)
        out.setdefault(plan.hash, plan)
    return list(out.values())


def _scores(s: Search, plan: Plan, pool: TeacherPool) -> dict[str, float]:
    """The plan's scores at every rung, as a study measures them, and against the teacher on the pool."""
    p = s.prepared
    model, done, out = p.space.apply(plan), 0, {}
    # the rungs, then the re-scoring rung (evaluate.rescore_top): on to four times the top rung's steps
    rungs = [(rung, steps, "") for rung, steps in enumerate(p.rungs)]
    rungs.append((len(p.rungs) - 1, 4 * p.rungs[-1], " (re-scoring)"))
    for rung, steps, label in rungs:
        m = s.runner._rung(model, rung, steps - done, done, None)
        out[f"accuracy @ {steps}{label}"] = float(m.accuracy or 0.0)
        out[f"-loss @ {steps}{label}"] = -float(m.loss if m.loss is not None else float("inf"))
        teacher = pool.score(model)
        out[f"-KL to teacher @ {steps}{label}"] = -teacher["kl"].value
        out[f"agreement @ {steps}{label}"] = teacher["agreement"].value
        done = steps
    return out


def main() -> None:
    ap = parser(__doc__, budgets="0.5,0.15")
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--rungs", default="50,200", help="fine-tune steps per rung")
    ap.add_argument("--max-val", type=int, default=2000, help="validation images below the top rung")
    ap.add_argument("--pool", type=int, default=5000, help="training images held out of fine-tunes for the teacher")
    args = parse(ap, {**SMOKE, "budgets": "0.5", "plans": 4, "pool": 200})
    args.rungs = [int(x) for x in args.rungs.split(",")]
    torch.set_num_threads(args.threads)
    where = machine()
    t_all = time.perf_counter()
    s = _search(args, temp_dir())
    p = s.prepared
    pool = TeacherPool.build(p.base_model, p.data.hold_out_pool(args.pool))  # before any fine-tune
    print(f"# {args.data}: ResNet-20 baseline {p.base_accuracy:.4f} on validation; {where}", flush=True)
    rows = []
    for budget in [float(x) for x in args.budgets.split(",")]:
        scores: dict[str, list[float]] = {}
        test: list[float] = []
        for i, plan in enumerate(_plans(s, Budget(macs=f"{budget:.0%}"), args.plans, seed=int(budget * 1000))):
            for k, v in _scores(s, plan, pool).items():
                scores.setdefault(k, []).append(v)
            _, acc = train_final(p, p.space.apply(plan).to(p.device), steps=args.final_steps, seed=0)
            test.append(float(acc or 0.0))
            print(f"budget {budget:.0%} plan {i}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in scores.items())
                  + f"; test {test[-1]:.4f}", flush=True)  # fmt: skip
        spread = 100 * (max(test) - min(test))
        for name, vals in scores.items():
            rho = float(spearmanr(vals, test).statistic)
            good = [i for i, t in enumerate(test) if t >= sorted(test)[len(test) // 2]]  # the better half
            rho_good = float(spearmanr([vals[i] for i in good], [test[i] for i in good]).statistic)
            rows.append([f"{budget:.0%}", name, f"{rho:+.2f}", f"{rho_good:+.2f}", f"{len(test)}", f"{spread:.2f}"])
    print(
        f"\nSpearman correlation with the test accuracy after BN recalibration + {args.final_steps} distilled steps; "
        f"rungs {args.rungs}, {args.max_val} validation images below the top rung; the teacher's pool "
        f"{args.pool} training images no fine-tune uses; {where}; "
        f"{time.perf_counter() - t_all:.0f} s\n"
    )
    print_table(
        [
            "MAC budget",
            "score",
            "Spearman vs finalized test accuracy",
            "the same over the better half",
            "plans",
            "test accuracy spread (points)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
