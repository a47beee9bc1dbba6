"""Exports that cannot run code or ship damaged weights, read-only commands that never write, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from search import load_exported
from search.cli import main
from storage import StudyStore, file_sha256
from tests.search.conftest import ConfigMaker, dump

PG_URL = os.environ.get("PRUNETUNE_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def exported(existing: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "e"
    assert main(["export", str(existing), "--trial", "0", "--out", str(out)]) == 0
    return out


def _copy(export: Path, tmp: Path) -> Path:
    d = tmp / "copy"
    shutil.copytree(export, d)
    return d


def test_an_export_carries_the_sha256_the_store_recorded(existing: Path, exported: Path) -> None:
    meta = json.loads((exported / "model.json").read_text())
    store = StudyStore.open_existing(f"sqlite:///{existing.parent / 'study.db'}")
    row = store.candidate(store.study("t").id, trial_number=0)
    assert meta["weights_sha256"] == row.weights_sha256 == file_sha256(exported / "weights.safetensors")
    assert len(meta["weights_sha256"]) == 64


def test_a_tampered_model_json_never_imports_what_it_names(exported: Path, tmp_path: Path) -> None:
    """A module whose import leaves a mark: loading the export must refuse before importing it."""
    mark = tmp_path / "imported.txt"
    pkg = tmp_path / "evil_pkg_prunetune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\ndef build():\n    return None\n")
    d = _copy(exported, tmp_path)
    meta = json.loads((d / "model.json").read_text())
    for spec in ("evil_pkg_prunetune:build", "tempfile:mkdtemp", "os:getcwd"):
        (d / "model.json").write_text(json.dumps({**meta, "model": spec}))
        sys.path.insert(0, str(tmp_path))
        try:
            with pytest.raises(ValueError, match="never imports code that a file names") as e:
                load_exported(d)
        finally:
            sys.path.remove(str(tmp_path))
        assert spec in str(e.value) and "\n" not in str(e.value)
    assert not mark.exists() and "evil_pkg_prunetune" not in sys.modules


def test_a_factory_the_caller_passes_is_used(exported: Path, tmp_path: Path) -> None:
    from evaluators import build_model

    d = _copy(exported, tmp_path)
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, "model": "my.models:resnet20"}))
    calls = []

    def factory() -> object:
        calls.append(1)
        return build_model("zoo:resnet20", in_channels=1, num_classes=10)

    model = load_exported(d, factories={"my.models:resnet20": factory})
    assert calls == [1] and not model.training


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "weights.safetensors").write_bytes(b"garbage"), "does not match the SHA-256 in model.json"),
        (lambda d: (d / "model.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "model.json").write_text("[1, 2]"), "must hold a JSON object"),
        (lambda d: (d / "plan.json").unlink(), "plan.json is missing"),
        (lambda d: (d / "plan.json").write_text('{"prune": [1, 2]}'), "plan key 'prune' must be a JSON object"),
    ],
    ids=["weights-replaced", "json", "not-object", "no-plan", "plan-type"],
)
def test_a_damaged_export_is_refused_in_one_line(exported: Path, tmp_path: Path, damage: object, message: str) -> None:
    d = _copy(exported, tmp_path)
    damage(d)  # type: ignore[operator]
    with pytest.raises((ValueError, TypeError), match=message) as e:
        load_exported(d)
    assert "\n" not in str(e.value)


def _clone_study(existing: Path, tmp: Path) -> Path:
    """A copy of the existing study whose candidates point at copies of their weights."""
    root = tmp / "clone"
    shutil.copytree(existing.parent, root)
    db = root / "study.db"
    cfg = root / existing.name
    cfg.write_text(cfg.read_text().replace(str(existing.parent), str(root)))  # its own database and artifacts
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE prunetune_candidates SET artifact = replace(artifact, ?, ?)", (str(existing.parent), str(root))
        )
    return root / existing.name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "is gone from this machine: it was deleted or moved"),
        (lambda p: p.write_bytes(b"not the weights the study wrote"), "is not the one the study wrote"),
    ],
    ids=["deleted", "replaced"],
)
def test_export_checks_the_weights_it_ships(
    existing: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    cfg = _clone_study(existing, tmp_path)
    store = StudyStore.open_existing(f"sqlite:///{cfg.parent / 'study.db'}")
    row = store.candidate(store.study("t").id, trial_number=0)
    damage(Path(str(row.artifact)))  # type: ignore[operator]
    capfd.readouterr()
    assert main(["export", str(cfg), "--trial", "0", "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "weights.safetensors").exists()


def test_read_only_commands_leave_a_study_file_byte_identical(existing: Path, tmp_path: Path) -> None:
    cfg = _clone_study(existing, tmp_path)
    db = cfg.parent / "study.db"
    # the database and its write-ahead log (not -shm: SQLite's shared-memory index, which readers update)
    files = {p: p.read_bytes() for p in (db, db.with_name("study.db-wal")) if p.exists()}
    before = dump(db)
    assert main(["front", str(cfg)]) == 0
    assert main(["status", str(cfg)]) == 0
    assert main(["report", str(cfg), "--out", str(tmp_path / "r")]) == 0
    assert main(["export", str(cfg), "--trial", "0", "--out", str(tmp_path / "e")]) == 0
    assert dump(db) == before
    assert {p: p.read_bytes() for p in files} == files


def _pg_dump(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    pg_dump = str(bins[-1]) if bins else "pg_dump"
    args = [pg_dump, "-h", str(u.host), "-p", str(u.port), "-U", str(u.username), "--no-owner", str(u.database)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def test_read_only_commands_never_write_to_an_unrelated_postgresql_database(
    capfd: pytest.CaptureFixture[str],
) -> None:
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PRUNETUNE_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        pytest.skip('no PostgreSQL server: run `eval "$(bash scripts/postgres.sh start)"`')
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"foreign_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    app = create_engine(url)
    with app.begin() as con:
        con.execute(text("CREATE TABLE invoices (id serial PRIMARY KEY, total numeric)"))
        con.execute(text("INSERT INTO invoices (total) VALUES (12.5)"))
    app.dispose()
    try:
        before = _pg_dump(url)
        for argv in (
            ["front"],
            ["status"],
            ["report", "--out", "/tmp/never"],
            ["export", "--trial", "0", "--out", "/tmp/x"],
        ):
            capfd.readouterr()
            assert main([argv[0], "--storage", url, *argv[1:]]) == 2
            err = capfd.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "holds no PruneTune study" in err[0], err
        assert _pg_dump(url) == before
    finally:
        with admin.connect() as con:
            con.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def test_ctrl_c_releases_the_candidate_and_status_says_so(make_config: ConfigMaker, tmp_path: Path) -> None:
    cfg = make_config(search__candidates=4, evaluate__finetune_steps=400, evaluate__eval_every=100)
    db = tmp_path / "study.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", str(cfg), "--quiet", "--evaluate.threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until a candidate is being evaluated
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    if con.execute("SELECT count(*) FROM prunetune_candidates WHERE status='RUNNING'").fetchone()[0]:
                        break
            except sqlite3.OperationalError:
                pass
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "prunetune: interrupted; rerun the same command to resume"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT worker, error FROM prunetune_candidates WHERE status='RUNNING'").fetchall()
    assert rows == [(None, "interrupted by the user: the next run evaluates it again")]
    out = subprocess.run(
        [sys.executable, "-m", "search.cli", "status", str(cfg)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    ).stdout
    out = " ".join(out.split())  # the console wraps long lines
    assert "interrupted: candidate 1 (trial -), attempt 1: interrupted by the user" in out and "running:" not in out
