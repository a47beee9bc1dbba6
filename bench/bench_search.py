"""The search against the baselines, after the same fine-tune, at 30% and 50% of the MACs.

    .venv/bin/python bench/bench_search.py --data digits [--seeds 0,1,2] [--candidates 30]
    .venv/bin/python bench/bench_search.py --data fashion-mnist --epochs 5 --max-val 2000 --final-steps 300

For one trained ResNet-20 and each MAC budget, four compressed models get the
same final treatment (BN recalibration, ``--final-steps`` fine-tune steps with
the seed's data order, accuracy on the full validation set):

(a) **uniform L1**: the same prune ratio for every channel group, keeping the
    largest-L1 channels and the matching input channels (``space.fit`` of the
    empty plan: one ratio, scaled onto the budget);
(b) **torch-pruning global magnitude**: ``tp.pruner.MagnitudePruner`` with
    ``global_pruning=True`` (L1 group importance), its ratio bisected until the
    measured MACs meet the budget;
(c) **allocator**: ``space.allocate`` (pruning only), repaired with ``fit``;
(d) **search**: the best candidate of a 30-candidate ``prunetune`` study (TPE,
    the allocator's and the uniform plan first; candidates scored after
    ``--search-steps`` fine-tune steps), in its own SQLite file.

Every seed changes the final fine-tune's data order and the search's sampler.
The second table splits the search's seconds per candidate into sample /
repair / apply / evaluate / store.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators import BNRecalibration, Context, FineTune, Recipe, evaluate_accuracy, load_data, train_baseline
from search import Search, load_config
from spaces import Budget, ModelSpace, Plan, Status, measure_cost


def tp_global_magnitude(base: nn.Module, example: torch.Tensor, macs_limit: float) -> tuple[nn.Module, float]:
    """torch-pruning's global magnitude pruning at the largest ratio whose measured MACs meet the limit.

    Call it after building a :class:`spaces.ModelSpace`: tracing one installs the
    compatibility shim that torch-pruning needs on current PyTorch.
    """
    import torch_pruning as tp

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(base).eval()
        fc = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        pruner = tp.pruner.MagnitudePruner(
            m,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            global_pruning=True,
            pruning_ratio=ratio,
            max_pruning_ratio=0.95,
            ignored_layers=fc[-1:],
        )
        pruner.step()
        return m

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if measure_cost(m, example).macs <= macs_limit:
            hi, best = mid, m
        else:
            lo = mid
    if best is None:
        raise RuntimeError("torch-pruning never met the budget")
    return best, hi


def final_accuracy(model: nn.Module, data: Any, teacher: nn.Module, seed: int, steps: int) -> float:
    model = copy.deepcopy(model)
    ctx = Context(data=data, teacher=teacher, seed=seed, batch_size=128)
    BNRecalibration(20).evaluate(model, ctx)
    FineTune(steps=steps).evaluate(model, ctx)
    acc, _ = evaluate_accuracy(model, ctx)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--epochs", type=int, default=30, help="baseline epochs (cached in artifacts/)")
    ap.add_argument("--budgets", default="0.3,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--search-steps", type=int, default=100)
    ap.add_argument("--final-steps", type=int, default=300)
    ap.add_argument("--max-val", type=int, default=None, help="validation images per search candidate")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(args.data)
    base = train_baseline("zoo:resnet20", data, recipe=Recipe(epochs=args.epochs), artifacts_dir="artifacts")
    teacher = base.model.eval()
    example = data.example_inputs(1)
    space = ModelSpace(teacher, example)
    base_cost = space.base_cost
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[list[str]] = []
    timing_rows: list[list[str]] = []
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    print(f"# {args.data}: ResNet-20 baseline {base.accuracy:.4f} ({args.epochs} epochs); {where}")
    for b in [float(x) for x in args.budgets.split(",")]:
        budget = Budget(macs=f"{b:.0%}")
        limit = budget.absolute(base_cost)["macs"]
        models: dict[str, nn.Module] = {
            "(a) uniform L1": space.apply(space.fit(space.uniform_plan(0.0), budget)),
            "(b) torch-pruning global magnitude": tp_global_magnitude(teacher, example, limit)[0],
            "(c) allocator": space.apply(space.fit(space.allocate(budget, rank=False).plan, budget)),
        }
        accs: dict[str, list[float]] = {k: [] for k in [*models, "(d) search, best of N"]}
        search_models = []
        split = {k: 0.0 for k in ("sample", "repair", "apply", "evaluate", "store")}
        n_cand, wall = 0, 0.0
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(
                    None,
                    {
                        "model.spec": "zoo:resnet20",
                        "model.train_epochs": args.epochs,
                        "data.spec": args.data,
                        "budget.macs": f"{b:.0%}",
                        "evaluate.finetune_steps": args.search_steps,
                        "evaluate.max_val_samples": args.max_val,
                        "search.study": f"bench-{args.data}-{b}-{seed}",
                        "search.candidates": args.candidates,
                        "search.seed": seed,
                        "storage.url": f"sqlite:///{Path(tmp) / 'bench.db'}",
                    },
                )
                t = time.perf_counter()
                search = Search(cfg).prepare()
                res = search.run()
                wall += time.perf_counter() - t
                prepared = search.prepared
                done = prepared.store.candidates(prepared.study_id, status=Status.COMPLETE)
                best = max(done, key=lambda r: (r.accuracy, -r.macs))
                search_models.append(space.apply(Plan.from_json(best.plan)))
                for k, v in res.timings.per_candidate().items():
                    split[k] += v * res.timings.candidates
                n_cand += res.timings.candidates
        for seed_i, seed in enumerate(seeds):
            for name, m in models.items():
                accs[name].append(final_accuracy(m, data, teacher, seed, args.final_steps))
            accs["(d) search, best of N"].append(
                final_accuracy(search_models[seed_i], data, teacher, seed, args.final_steps)
            )
        for name, vals in accs.items():
            m = models.get(name) or search_models[0]
            c = measure_cost(m, example)
            macs = ", ".join(f"{measure_cost(sm, example).macs / base_cost.macs:.1%}" for sm in search_models)
            shown_macs = macs if name.startswith("(d)") else f"{c.macs / base_cost.macs:.1%}"
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            rows.append(
                [
                    args.data,
                    f"{b:.0%}",
                    name.replace("best of N", f"best of {args.candidates}"),
                    shown_macs,
                    f"{c.params / base_cost.params:.1%}" if not name.startswith("(d)") else "-",
                    f"{100 * statistics.mean(vals):.2f} ± {100 * sd:.2f}",
                ]
            )
        per = {k: v / max(n_cand, 1) for k, v in split.items()}
        timing_rows.append(
            [args.data, f"{b:.0%}", str(n_cand), *(f"{per[k]:.3f}" for k in split), f"{wall / len(seeds):.0f}"]
        )
    title = f"final accuracy after BN recalibration + {args.final_steps} fine-tune steps, seeds {seeds}"
    print(f"\n{title} (mean ± std, %)\n")
    print("| data | MAC budget | method | MACs | params | accuracy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nsearch seconds per candidate (all seeds)\n")
    print("| data | budget | candidates | sample | repair | apply | evaluate | store | s per search |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in timing_rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
