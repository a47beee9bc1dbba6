"""`--search.backend ray` end to end: a real two-node Ray cluster on loopback (scripts/ray_local.sh) and the
real PostgreSQL server CI starts (scripts/postgres.sh). Skipped only where Ray is not installed."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from search import load_config
from search.cli import main
from spaces import Status
from storage import CandidateRow, StudyStore
from tests.search.conftest import ConfigMaker, dump

ROOT = Path(__file__).parents[2]
PG_URL = os.environ.get("PRUNETUNE_TEST_POSTGRES_URL")
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed: pip install 'prunetune[ray]'")
FINISHED = {"COMPLETE", "PRUNED", "FAIL"}


# ---------------------------------------------------------------------- a candidate finished twice is recorded once
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_candidate_finished_twice_is_recorded_once(backend: str, tmp_path: Path) -> None:
    if backend == "postgresql" and not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PRUNETUNE_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        pytest.skip("no PostgreSQL server")
    store = StudyStore(PG_URL if backend == "postgresql" else f"sqlite:///{tmp_path / 's.db'}")
    sid = store.ensure_study(
        f"twice-{uuid.uuid4().hex[:8]}", model_spec="m", data_spec="d", budget={}, space_options={}, base_cost={}
    )
    cost = {"macs": 10.0, "params": 1.0, "bytes": 4.0}
    cid = store.reserve(sid, "{}", "h1")
    assert cid is not None
    assert store.finish(cid, "COMPLETE", accuracy=0.9, cost=cost, seconds=1.0) is True
    assert store.finish(cid, "FAIL", error="a late second run") is False  # an at-least-once scheduler's echo
    (row,) = store.candidates(sid)
    assert (row.status, row.accuracy, row.error, row.seconds) == ("COMPLETE", 0.9, None, 1.0)
    assert [r.id for r in store.front(sid)] == [cid]
    # two finishers at the same moment: exactly one wins
    cid2 = store.reserve(sid, "{}", "h2")
    assert cid2 is not None
    wins: list[bool] = []
    go = threading.Barrier(2)

    def finish(acc: float) -> None:
        go.wait()
        wins.append(store.finish(cid2, "COMPLETE", accuracy=acc, cost=cost))

    threads = [threading.Thread(target=finish, args=(a,)) for a in (0.5, 0.6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, True]


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--search.backend", "dask"], "config key 'search.backend': Input should be 'local' or 'ray' (got 'dask')"),
        (["--ray.gpus_per_candidate", "-1"], "config key 'ray.gpus_per_candidate': Input should be greater than"),
        (["--ray.gpus_per_candidate", "1.5"], "must be a fraction below 1 or a whole number, got 1.5"),
        (["--ray.max_concurrent", "0"], "config key 'ray.max_concurrent': Input should be greater than or equal to 1"),
        (["--search.backend", "ray", "--ray.address", "127.0.0.1:1"], "cannot reach the Ray cluster at ray.address="),
        (["--search.backend", "ray", "--ray.address", "head-node"], "ray.address must look like HOST:PORT"),
        (["--search.backend", "ray", "--ray.address", "ray://head:10001"], "is a Ray Client address"),
    ],
)
def test_bad_ray_input_is_one_line_exit_2_and_the_study_is_untouched(
    existing: Path, flags: list[str], message: str, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "--ray.address" in flags and not HAVE_RAY:
        message = "needs Ray Tune: pip install 'prunetune[ray]'"
    db = existing.parent / "study.db"
    before = dump(db)
    capfd.readouterr()
    code = main(["run", str(existing), "--quiet", *flags])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("prunetune: error: ") and message in err[0], err
    assert dump(db) == before


# ---------------------------------------------------------------------- the loopback cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _cluster(worker_cpus: int = 1) -> dict[str, str]:
    """Start a head (127.0.0.2) and a worker node (127.0.0.3) with scripts/ray_local.sh; the driver's environment."""
    env = dict(
        os.environ,
        PRUNETUNE_RAY_DIR=f"/tmp/ptray-{uuid.uuid4().hex[:8]}",  # short: Ray puts unix sockets in it
        PRUNETUNE_RAY_PORT=str(_free_port()),
        PRUNETUNE_RAY_WORKER_CPUS=str(worker_cpus),
    )
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        ["bash", "scripts/ray_local.sh", "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    if out.returncode != 0:
        _stop(env)
        pytest.fail(f"scripts/ray_local.sh start failed: {out.stderr[-2000:]}")
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    assert env["RAY_ADDRESS"].startswith("127.0.0.2:") and env["PRUNETUNE_RAY_NODE_IP"] == "127.0.0.2"
    return env


def _stop(env: dict[str, str]) -> None:
    subprocess.run(["bash", "scripts/ray_local.sh", "stop"], env=env, cwd=ROOT, timeout=120, check=False)
    assert not Path(env["PRUNETUNE_RAY_DIR"]).exists()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install 'prunetune[ray]'")
    env = _cluster()
    try:
        yield env
    finally:
        _stop(env)


@pytest.fixture
def own_cluster() -> Iterator[dict[str, str]]:
    """A cluster of its own, for a test that kills one of its nodes."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install 'prunetune[ray]'")
    env = _cluster()
    try:
        yield env
    finally:
        _stop(env)


class _Driver:
    """``prunetune run CONFIG --search.backend ray`` in a child process (its output in a file)."""

    def __init__(self, cfg: Path, env: dict[str, str], log: Path, *flags: str) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet", "--search.backend", "ray", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def wait(self, timeout: float = 420) -> str:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the Ray driver ran past {timeout}s: {self.output()[-3000:]}") from None
        assert code == 0, self.output()[-3000:]
        return self.output()

    def output(self) -> str:
        return " ".join(self.log.read_text(errors="replace").split())  # as one line: the console wraps at 80

    def until(self, what: str, ready: Callable[[], bool], timeout: float = 300) -> None:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            assert self.proc.poll() is None, f"the driver exited before {what}: {self.output()[-3000:]}"
            if ready():
                return
            time.sleep(0.05)
        raise AssertionError(f"no {what} after {timeout}s: {self.output()[-3000:]}")


def _candidates(store: StudyStore, study: str) -> list[CandidateRow]:
    try:
        return store.candidates(store.study(study).id)
    except ValueError:  # not created yet
        return []


def _brute_front(rows: list[CandidateRow]) -> set[int]:
    done = [(r.id, (-(r.accuracy or 0.0), r.macs or 0.0)) for r in rows if r.status == "COMPLETE"]
    return {i for i, a in done if not any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in done)}


def _check_study(store: StudyStore, url: str, study: str, n: int) -> list[CandidateRow]:
    """``n`` candidates, ``n`` plans, none RUNNING, each recorded once (here and in Optuna), the front exact."""
    rows = _candidates(store, study)
    assert len(rows) == n and len({r.plan_hash for r in rows}) == n
    assert {r.status for r in rows} <= FINISHED, [(r.id, r.status) for r in rows]
    assert {r.id for r in store.front(store.study(study).id)} == _brute_front(rows)
    trials = {t.number: t for t in optuna.load_study(study_name=study, storage=url).get_trials()}
    assert not [t for t in trials.values() if t.state.name == "RUNNING"]
    assert len({r.trial_number for r in rows}) == n  # every candidate has its own trial
    for r in rows:
        t = trials[r.trial_number]  # type: ignore[index]
        assert t.state.name == r.status
        if r.status == "COMPLETE":
            assert t.values == [r.accuracy_at(0), r.macs]  # the sampler hears rung 0, which every candidate reaches
    told = Counter(
        t.user_attrs.get("plan_hash")
        for t in trials.values()
        if t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs
    )
    assert all(told[r.plan_hash] == 1 for r in rows if r.status != "FAIL"), told
    return rows


# ---------------------------------------------------------------------- the tests on the cluster
@needs_ray
def test_worker_node_killed_mid_candidate_still_gives_12_candidates_recorded_once(
    make_config: ConfigMaker, pg_url: str, own_cluster: dict[str, str], tmp_path: Path
) -> None:
    name = f"ray-node-{uuid.uuid4().hex[:8]}"
    cfg = make_config(
        search__candidates=12,
        search__study=name,
        storage__url=pg_url,
        evaluate__finetune_steps=24,
        evaluate__eval_every=12,
        evaluate__threads=1,
        ray__max_concurrent=2,
    )
    store = StudyStore(pg_url)
    driver = _Driver(cfg, own_cluster, tmp_path / "driver.log")

    def both_busy() -> bool:  # both nodes evaluate (1 CPU each), actors warm
        rows = _candidates(store, name)
        return sum(r.status != "RUNNING" for r in rows) >= 3 and sum(r.status == "RUNNING" for r in rows) == 2

    driver.until("two candidates running after three finished", both_busy)
    raylet = int(Path(own_cluster["PRUNETUNE_RAY_DIR"], "worker.raylet.pid").read_text().split()[0])
    os.kill(raylet, signal.SIGKILL)
    out = driver.wait()
    assert "its Ray trial failed (worker or node died); Ray Tune runs it again" in out  # a candidate was cut
    rows = _check_study(store, pg_url, name, 12)
    assert {r.worker for r in rows} == {rows[0].worker}  # the driver owns its candidates


@needs_ray
def test_driver_sigkill_then_rerun_keeps_every_completed_candidate_once(
    make_config: ConfigMaker, pg_url: str, cluster: dict[str, str], tmp_path: Path
) -> None:
    name = f"ray-driver-{uuid.uuid4().hex[:8]}"
    cfg = make_config(
        search__candidates=6,
        search__study=name,
        storage__url=pg_url,
        evaluate__finetune_steps=20,
        evaluate__eval_every=10,
        evaluate__threads=1,
        ray__max_concurrent=2,
    )
    store = StudyStore(pg_url)
    driver = _Driver(cfg, cluster, tmp_path / "first.log")
    driver.until("three finished candidates", lambda: sum(r.status != "RUNNING" for r in _candidates(store, name)) >= 3)
    seen = {r.id for r in _candidates(store, name)}
    driver.until("a new candidate", lambda: bool({r.id for r in _candidates(store, name)} - seen))
    driver.proc.send_signal(signal.SIGKILL)
    driver.proc.wait()
    time.sleep(2)  # Ray ends the dead driver's trials
    rows = _candidates(store, name)
    done = {r.id: (r.plan_hash, r.status, r.accuracy, r.artifact) for r in rows if r.status != "RUNNING"}
    running = {r.id for r in rows if r.status == "RUNNING"}
    assert len(done) >= 3 and running
    out = _Driver(cfg, cluster, tmp_path / "rerun.log").wait()
    assert "evaluating it again" in out
    rows = _check_study(store, pg_url, name, 6)
    after = {r.id: (r.plan_hash, r.status, r.accuracy, r.artifact) for r in rows}
    assert all(after[cid] == v for cid, v in done.items())  # still there, once, unchanged
    assert all(r.attempts == 2 for r in rows if r.id in running)


@needs_ray
def test_ctrl_c_and_sigterm_stop_a_ray_study_cleanly_and_a_rerun_finishes_it(
    make_config: ConfigMaker, cluster: dict[str, str], tmp_path: Path
) -> None:
    """Tune's own SIGINT handler would end the run as if it were done (exit 0); ours stops it: 130 / 143."""
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    cfg = make_config(
        search__candidates=4,
        storage__url=url,
        evaluate__finetune_steps=400,  # long enough to be stopped in the middle of a candidate
        evaluate__eval_every=100,
        evaluate__threads=1,
        ray__max_concurrent=1,
    )
    store = StudyStore(url)
    for sig in (signal.SIGINT, signal.SIGTERM):
        driver = _Driver(cfg, cluster, tmp_path / f"{sig.name}.log")
        seen = {r.id for r in _candidates(store, "t")}
        driver.until("a new candidate", lambda seen=seen: any(r.id not in seen for r in _candidates(store, "t")))
        time.sleep(1.0)  # its trial is fine-tuning
        driver.proc.send_signal(sig)
        assert driver.proc.wait(timeout=180) == 128 + sig, driver.output()[-3000:]
        expected = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
        assert driver.output().endswith(f"prunetune: {expected}; rerun the same command to resume"), driver.output()
        rows = _candidates(store, "t")
        assert not [r.id for r in rows if r.status == "RUNNING" and r.worker], [(r.id, r.worker) for r in rows]
    out = _Driver(cfg, cluster, tmp_path / "rerun.log").wait()
    assert "evaluating it again" in out
    rows = _check_study(store, url, "t", 4)
    assert sum(r.attempts for r in rows) >= 6  # the two stopped candidates were evaluated again


def _schema(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def _shape(rows: list[CandidateRow]) -> dict[str, set[frozenset[str]]]:
    """Per status, which fields the rows fill."""
    out: dict[str, set[frozenset[str]]] = {}
    for r in rows:
        filled = frozenset(k for k, v in vars(r).items() if v is not None and k not in ("error",))
        out.setdefault(str(r.status), set()).add(filled)
    return out


@needs_ray
def test_local_and_ray_store_the_same_schema_and_ray_finishes_a_local_study(
    make_config: ConfigMaker, cluster: dict[str, str], tmp_path: Path
) -> None:
    common = {
        "search__candidates": 3,
        "evaluate__threads": 1,
        "ray__max_concurrent": 1,
        **{"evaluate__rungs": [2, 4], "evaluate__reduction_factor": 2, "evaluate__finetune_steps": None},
    }
    local = make_config("local", storage__url=f"sqlite:///{tmp_path / 'local.db'}", **common)
    on_ray = make_config("on_ray", storage__url=f"sqlite:///{tmp_path / 'ray.db'}", **common)
    assert main(["run", str(local), "--quiet"]) == 0
    _Driver(on_ray, cluster, tmp_path / "ray.log").wait()
    assert _schema(tmp_path / "local.db") == _schema(tmp_path / "ray.db")  # our tables and Optuna's
    a = StudyStore(load_config(local).storage.url)
    b = StudyStore(load_config(on_ray).storage.url)
    rows_a = _check_study(a, a.url, "t", 3)
    rows_b = _check_study(b, b.url, "t", 3)
    assert [r.plan_hash for r in rows_a[:2]] == [r.plan_hash for r in rows_b[:2]]  # the seed plans, same order
    assert rows_a[0].rungs and rows_b[0].rungs and rows_b[0].rung == 1  # a Ray trial goes through the rungs too
    shape_a, shape_b = _shape(rows_a), _shape(rows_b)
    assert all(shape_a[s] == shape_b[s] for s in shape_a.keys() & shape_b.keys()), (shape_a, shape_b)
    attrs = [
        sorted((t.user_attrs.get("kind", "sampled"), tuple(sorted(t.user_attrs))) for t in optuna.load_study(
            study_name="t", storage=s.url
        ).get_trials())
        for s in (a, b)
    ]  # fmt: skip
    assert attrs[0] == attrs[1]
    # a study begun locally, finished on Ray
    before = [(r.id, r.plan_hash, r.status, r.accuracy, r.artifact) for r in rows_a]
    _Driver(local, cluster, tmp_path / "finish.log", "--search.candidates", "5").wait()
    rows = _check_study(a, a.url, "t", 5)
    assert [(r.id, r.plan_hash, r.status, r.accuracy, r.artifact) for r in rows[:3]] == before


@needs_ray
def test_a_language_model_study_recovers_its_candidates_on_the_cluster(cluster: dict[str, str], tmp_path: Path) -> None:
    from tests.search.test_decoder_study import write_config as decoder_config

    cfg = decoder_config(tmp_path, **{"candidates = 6": "candidates = 4"})
    _Driver(cfg, cluster, tmp_path / "driver.log").wait()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore(url)
    rows = store.candidates(store.study("lm").id)
    assert len(rows) == 4 and len({r.plan_hash for r in rows}) == 4
    assert all(r.status is Status.COMPLETE and r.perplexity and Path(r.artifact or "").is_file() for r in rows)
    trials = {t.number: t for t in optuna.load_study(study_name="lm", storage=url).get_trials()}
    for r in rows:  # the sampler heard every sampled candidate once, from the trial that recovered it
        if r.trial_number is not None:
            assert trials[r.trial_number].values == [r.perplexity_after(r.rungs[0][0]), r.memory]
    assert sum(r.top_rung >= 1 for r in rows) == 2  # the driver re-scored the best two (rescore_top)
    assert {r.id for r in store.front(store.study("lm").id)} <= {r.id for r in rows}
    assert len(list((tmp_path / "artifacts" / "ray").glob("*/_decoder_trial_*"))) == 4  # one Tune trial each
