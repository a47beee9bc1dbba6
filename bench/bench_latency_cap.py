"""Does a latency cap hold on the device? A latency-capped study with ranks, its front measured end to end.

    .venv/bin/python bench/bench_latency_cap.py                        # resnet50, synthetic 32x32, 8 candidates
    .venv/bin/python bench/bench_latency_cap.py --model torchvision:resnet18 --cap 50%
    .venv/bin/python bench/bench_latency_cap.py --smoke                # CI: ResNet-20 on digits, 3 candidates

A real study (:class:`search.Search`, SQLite store in a temporary folder): the
model (torchvision's ``resnet50`` by default, trained for ``--epochs`` on the
synthetic data set, 3x32x32 random images, so the run stays small), a latency
budget (``--cap``, predicted by the device profile the study measures first,
with the svd factor chains since ``space.rank = true``), a few fine-tune steps
per candidate. After the run, the study itself measures every front member end
to end (:mod:`search.study._remeasure`): a member over the cap by more than
its noise is flagged and taken off the front, and the members that replace it
are measured in turn; the measured points refit the profile for the study.

Then this script checks the claim independently: every "within budget" front
member is timed again (:func:`spaces.measure_latency`, ``--runs`` calls) and
counted when that second median exceeds the cap by more than its own noise
(the same rule, :func:`storage.exceeds_cap`). Printed: candidates, front members
measured, flagged over the cap, within-budget members over the cap on the
second measurement (the target: 0), the median prediction error over the
measured members before and after the refit, and the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from _shared import machine, parse, print_table  # bench/, beside this script

from search import Search, load_config
from search.preparation._profile import latency_device
from spaces import DeviceProfile, Plan, measure_latency
from storage import CandidateRow, exceeds_cap

if TYPE_CHECKING:
    from search.preparation._prepare import Prepared

SMOKE = {
    "model": "zoo:resnet20",
    "data": "digits",
    "cap": "auto",
    "candidates": 3,
    "epochs": 2,
    "steps": 2,
    "profile_runs": 2,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument(
        "--cap",
        default="60%",
        help="the latency budget (a share of the base model, or ms); auto: halfway between the base model's "
        "predicted latency and that of the plan pruned by 90%% everywhere (a tiny model's fixed overhead can "
        "make 60%% infeasible)",
    )
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1, help="baseline training epochs")
    ap.add_argument("--steps", type=int, default=4, help="fine-tune steps per candidate")
    ap.add_argument("--profile-runs", type=int, default=5, help="timed calls per point of the profile's tables")
    ap.add_argument("--runs", type=int, default=25, help="timed calls of the independent second measurement")
    ap.add_argument("--threads", type=int, default=2)
    args = parse(ap, SMOKE)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        search = Search(load_config(None, _overrides(args, Path(tmp))))
        cap = _profile_first(search, args.profile_runs)
        if args.cap == "auto":
            args.cap = f"{cap:.4f}ms"
            search = Search(load_config(None, _overrides(args, Path(tmp))))
        search.prepare()
        res = search.run()
        rows = _figures(search, res.total, args.runs)
    print(
        f"# latency cap on the device: {args.model} on {args.data}, budget latency {args.cap}, space.rank = true\n"
        f"# {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {time.perf_counter() - t0:.0f} s; "
        f"command: {' '.join(sys.argv)}"
    )
    print_table([r[0] for r in rows], [[r[1] for r in rows]])


def _overrides(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    return {
        "model.spec": args.model,
        "model.train_epochs": args.epochs,
        "data.spec": args.data,
        "budget.latency": args.cap,
        "space.rank.method": "svd",
        "evaluate.finetune_steps": args.steps,
        "evaluate.eval_every": 0,
        "evaluate.bn_batches": 2,
        "evaluate.batch_size": 64,
        "evaluate.threads": args.threads,
        "search.study": "latency-cap",
        "search.candidates": args.candidates,
        "search.allocator": "importance",
        "search.artifacts_dir": str(tmp / "artifacts"),
        "storage.url": f"sqlite:///{tmp / 'bench.db'}",
    }


def _profile_first(search: Search, runs: int) -> float:
    """Measure the study's profile with ``runs`` calls per point into its store (what preparation then reads);
    return the cap ``--cap auto`` means: halfway between the base model's predicted latency and that of the
    plan that removes 90 % of every group."""
    from search.preparation._profile import device_profile, profiled_methods, structure_space
    from storage import StudyStore

    cfg = search.cfg
    space = structure_space(cfg)
    prof, _ = device_profile(
        space,
        StudyStore(cfg.storage.url),
        device=torch.device("cpu"),
        threads=torch.get_num_threads(),
        runs=runs,
        methods=profiled_methods(cfg),
    )
    space.attach_profile(prof)
    base, small = space.cost(space.uniform_plan(0.0)).latency, space.cost(space.uniform_plan(0.9)).latency
    assert base is not None and small is not None
    return (base + small) / 2


def _figures(search: Search, total: int, runs: int) -> list[tuple[str, str]]:
    """The table's one row: what the study measured and flagged, and the independent second measurement."""
    from search.study._remeasure import device_cap

    p = search.prepared
    assert p.space.profile is not None
    cap = device_cap(p)
    assert cap is not None
    store = p.store
    front, over = store.front(p.study_id), store.over_cap(p.study_id)
    measured = [r for r in store.candidates(p.study_id) if (r.device_latency or {}).get("measured_ms")]
    again = [_second(p, r, runs) for r in front]
    still_over = sum(exceeds_cap(m, cap)[0] for m in again)
    cached = DeviceProfile.from_json(store.profile(p.space.profile.key) or "{}")
    refit_json = store.study_profile(p.study, p.space.profile.key)
    refit = DeviceProfile.from_json(refit_json) if refit_json else cached
    return [
        ("candidates", str(total)),
        ("cap ms", f"{cap:.3f}"),
        ("front (within)", str(len(front))),
        ("measured", str(len(measured))),
        ("flagged over cap", str(len(over))),
        ("within but over on re-measure", str(still_over)),
        ("median error (profile)", _error(p, cached, measured)),
        ("median error (refit)", _error(p, refit, measured)),
    ]


def _second(p: Prepared, row: CandidateRow, runs: int) -> dict[str, float]:
    """An independent end-to-end measurement of a front member on the profile's runtime and device."""
    assert p.space.profile is not None
    runtime = p.space.profile.runtime
    model = p.space.apply(Plan.from_json(row.plan))
    return measure_latency(
        model, p.data.example_inputs(1), device=latency_device(runtime, p.device), runs=runs, runtime=runtime
    )


def _error(p: Prepared, prof: DeviceProfile, rows: list[CandidateRow]) -> str:
    """The median ``|predicted - measured| / measured`` of ``prof`` over the measured ``rows``."""
    if not rows:
        return "-"
    errors = [
        abs(prof.predict(p.space, Plan.from_json(r.plan)) - float((r.device_latency or {})["measured_ms"]))
        / float((r.device_latency or {})["measured_ms"])
        for r in rows
    ]
    return f"{100 * statistics.median(errors):.1f} %"


if __name__ == "__main__":
    main()
