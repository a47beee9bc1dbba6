"""`prunetune run` end to end on real data (digits), a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from evaluators import Context, evaluate_accuracy, load_data
from search import load_config, load_exported
from search.cli import main
from spaces import Plan
from storage import StudyRecord, StudyStore
from tests.search.conftest import ConfigMaker

PG_URL = os.environ.get("PRUNETUNE_TEST_POSTGRES_URL")


def _rows(cfg: Path) -> tuple[StudyStore, StudyRecord, list]:
    c = load_config(cfg)
    store = StudyStore(c.storage.url)
    info = store.study(c.search.study or "")
    return store, info, store.candidates(info.id)


def _brute_front(rows: list, objectives: tuple[str, ...] = ("accuracy", "macs")) -> set[int]:
    done = [r for r in rows if r.status == "COMPLETE"]

    def vec(r: object) -> list[float]:
        return [-r.accuracy if o == "accuracy" else r.objective(o) for o in objectives]  # type: ignore[attr-defined]

    return {
        a.id
        for a in done
        if not any(
            all(x <= y for x, y in zip(vec(b), vec(a), strict=True)) and vec(b) != vec(a) for b in done if b is not a
        )
    }


def test_run_fills_the_study_within_budget_and_resumes(make_config: ConfigMaker, capsys: pytest.CaptureFixture) -> None:
    cfg = make_config(search__candidates=6)
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert "Pareto front of 't'" in capsys.readouterr().out
    store, info, rows = _rows(cfg)
    assert len(rows) == 6 and {r.status for r in rows} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert len({r.plan_hash for r in rows}) == 6
    base = info.base_cost
    for r in rows:  # every stored candidate meets the budget (50% of the base MACs)
        assert r.macs is not None and r.macs <= 0.5 * base["macs"]
        assert Plan.from_json(r.plan).hash == r.plan_hash
    assert {r.id for r in store.front(info.id)} == _brute_front(rows)
    # the allocator's and the uniform plan come first, then the sampler's; Optuna knows every candidate
    study = optuna.load_study(study_name="t", storage=load_config(cfg).storage.url)
    trials = {t.number: t for t in study.get_trials()}
    assert [trials[r.trial_number].user_attrs.get("kind") for r in rows[:2]] == ["allocator", "uniform"]
    for r in rows:
        t = trials[r.trial_number]
        assert t.state.name == r.status
        if r.status == "COMPLETE":
            assert t.values == [r.accuracy_at(0), r.macs]  # the sampler hears rung 0, which every candidate reaches
        if t.user_attrs.get("kind") is None:  # sampled: the budget's slack is its constraint
            assert t.system_attrs["constraints:macs"] <= 0
    # rerun with a larger study: resumes, earlier candidates untouched
    before = [(r.id, r.plan_hash, r.status, r.accuracy) for r in rows]
    assert main(["run", str(cfg), "--quiet", "--search.candidates", "8"]) == 0
    _, _, rows = _rows(cfg)
    assert len(rows) == 8 and [(r.id, r.plan_hash, r.status, r.accuracy) for r in rows[:6]] == before


def test_export_then_load_reproduces_accuracy(make_config: ConfigMaker, tmp_path: Path) -> None:
    cfg = make_config(search__candidates=2)
    assert main(["run", str(cfg), "--quiet"]) == 0
    store, info, _ = _rows(cfg)
    best = max(store.front(info.id), key=lambda r: r.accuracy)
    out = tmp_path / "export"
    assert main(["export", str(cfg), "--trial", str(best.trial_number), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "plan.json", "weights.safetensors"]
    model = load_exported(out)
    acc, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
    assert acc == best.accuracy
    assert sum(p.numel() for p in model.parameters()) == best.params


def test_front_status_and_report(make_config: ConfigMaker, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = make_config(search__candidates=3)
    assert main(["run", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    url = load_config(cfg).storage.url
    assert main(["front", "--storage", url]) == 0  # the only study in the store
    assert "Pareto front of 't'" in capsys.readouterr().out
    assert main(["status", str(cfg)]) == 0
    assert "candidates: 3 (" in capsys.readouterr().out
    assert main(["report", str(cfg), "--out", str(tmp_path / "rep")]) == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "rep" / "candidates.csv")
    assert len(df) == 3 and (df["macs_pct"] <= 50).all()
    assert "## Pareto front" in (tmp_path / "rep" / "report.md").read_text()


def test_rank_and_latency_objectives(make_config: ConfigMaker) -> None:
    cfg = make_config(
        search__candidates=3,
        search__objectives=["accuracy", "macs", "latency"],
        **{"space.rank__method": "svd"},
        search__seed_plans=["allocator", "uniform"],  # the third candidate is sampled: ratios and ranks
        evaluate__latency=True,
    )
    assert main(["run", str(cfg), "--quiet"]) == 0
    store, info, rows = _rows(cfg)
    assert any(Plan.from_json(r.plan).rank for r in rows)  # the joint space factorizes some layers
    done = [r for r in rows if r.status == "COMPLETE"]
    assert done and all(r.latency is not None and r.latency > 0 for r in done)
    front = {r.id for r in store.front(info.id)}
    assert front == _brute_front(rows, ("accuracy", "macs", "latency"))


def test_a_blend_study_samples_mixtures_of_its_seed_plans(make_config: ConfigMaker) -> None:
    from search import Search
    from search.sampling._params import plan_from_params

    cfg = make_config(search__candidates=5, **{"space.prune__sample_by": "blend"})
    search = Search(load_config(cfg)).prepare()
    p = search.prepared
    anchors = p.anchors
    assert anchors is not None and sorted(anchors) == ["allocator", "global", "uniform"]
    seeds = {kind.value: dict(plan.prune) for kind, plan, _ in search.seed_plans()}
    assert anchors == seeds  # the blend's anchors are the seed plans at the cap
    assert sorted(k for k in p.dists if not k.startswith("prune:stage")) == sorted(f"prune:{a}" for a in anchors)
    search.run()
    _, info, rows = _rows(cfg)
    sampled = [r for r in rows if r.kind == "sampled"]
    assert len(rows) == 5 and len(sampled) == 2 and all(r.macs <= 0.5 * info.base_cost["macs"] for r in rows)
    trial = search.teller.study.trials[-1]  # the last sampled plan, rebuilt from its parameters and fitted
    again = p.space.fit(plan_from_params(p.space, trial.params, p.space_options), p.budget)
    assert again.hash == trial.user_attrs["plan_hash"]


def _wait_for(path: Path, status: str, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "worker exited"
        if path.exists():
            try:
                with sqlite3.connect(path, timeout=5) as con:
                    got = con.execute(
                        "SELECT count(*) FROM prunetune_candidates WHERE status = ?", (status,)
                    ).fetchone()
                if got[0] >= n:
                    return
            except sqlite3.OperationalError:
                pass  # tables not created yet
        time.sleep(0.1)
    raise AssertionError(f"no {n} {status} candidates after {timeout}s")


def _running(db: Path) -> set[int]:
    with sqlite3.connect(db, timeout=5) as con:
        return {r[0] for r in con.execute("SELECT id FROM prunetune_candidates WHERE status = 'RUNNING'")}


def _kill_when_a_candidate_starts(db: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """SIGKILL right after a new candidate is reserved, so that it dies mid-evaluation (a candidate takes ~1 s)."""
    seen = _running(db)
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        assert proc.poll() is None, "worker exited before the kill"
        if _running(db) - seen:
            proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.01)
    raise AssertionError("no new candidate started")


def _spawn(cfg: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )


def test_sigkill_then_rerun_keeps_every_completed_candidate_once(make_config: ConfigMaker, tmp_path: Path) -> None:
    cfg = make_config(search__candidates=8, evaluate__finetune_steps=40, evaluate__eval_every=10)
    proc = _spawn(cfg)
    db = tmp_path / "study.db"
    _wait_for(db, "COMPLETE", 3, proc)
    _kill_when_a_candidate_starts(db, proc)
    proc.wait()
    _, _, rows = _rows(cfg)
    done = {r.id: (r.plan_hash, r.accuracy, r.artifact) for r in rows if r.status == "COMPLETE"}
    running = [r.id for r in rows if r.status == "RUNNING"]
    assert len(done) >= 3 and len(running) == 1
    assert main(["run", str(cfg), "--quiet"]) == 0
    _, _, rows = _rows(cfg)
    assert len(rows) == 8 and not [r for r in rows if r.status == "RUNNING"]
    assert len({r.plan_hash for r in rows}) == 8
    after = {r.id: (r.plan_hash, r.accuracy, r.artifact) for r in rows}
    assert all(after[cid] == v for cid, v in done.items())  # still there, exactly once, unchanged
    (retried,) = [r for r in rows if r.id == running[0]]
    assert retried.attempts == 2 and retried.status != "RUNNING"
    study = optuna.load_study(study_name="t", storage=load_config(cfg).storage.url)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_two_workers_on_postgresql_share_one_study(make_config: ConfigMaker, pg_url: str) -> None:
    name = f"two-{uuid.uuid4().hex[:8]}"
    cfg = make_config(search__candidates=10, search__study=name, storage__url=pg_url, evaluate__finetune_steps=20)
    workers = [_spawn(cfg, "--search.worker", str(i), "--evaluate.threads", "1") for i in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    store = StudyStore(pg_url)
    rows = store.candidates(store.study(name).id)
    assert len(rows) == 10 and len({r.plan_hash for r in rows}) == 10
    assert {r.status for r in rows} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert len({r.worker for r in rows}) == 2  # both worked
    assert {r.id for r in store.front(store.study(name).id)} == _brute_front(rows)
