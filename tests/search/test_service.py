"""``prunetune serve`` and ``prunetune worker``: the real server on loopback, a real browser, a real worker."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from search.cli import main
from tests.search.conftest import EPOCHS, dump
from tests.search.servers import CHROMIUM_ARGS, chromium, free_port, stop, uvicorn_thread

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _copy(existing: Path, to: Path) -> Path:
    """A consistent copy of the fixture's study (the backup API: the WAL's pages included)."""
    with sqlite3.connect(f"file:{existing.parent / 'study.db'}?mode=ro", uri=True) as src, sqlite3.connect(to) as dst:
        src.backup(dst)
    return to


@pytest.fixture
def served(existing: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from search.service._app import create_app

    db = _copy(existing, tmp_path / "served.db")
    with uvicorn_thread(create_app(f"sqlite:///{db}", TOKEN)) as base:
        yield base, db


def _digits_config(study: str, **search: Any) -> dict[str, Any]:
    """The tests' tiny digits run (tests/search/conftest.py's write_config), as the JSON a client submits."""
    return {
        "model": {"spec": "zoo:resnet20", "train_epochs": EPOCHS},
        "data": {"spec": "digits"},
        "budget": {"macs": "50%"},
        "space": {"prune": {"max_ratio": 0.8}},
        "evaluate": {"bn_batches": 2, "finetune_steps": 4, "eval_every": 2, "batch_size": 64},
        "search": {"candidates": 2, "study": study, **search},
    }


def test_every_request_needs_the_right_token(served: tuple[str, Path]) -> None:
    base, _ = served
    for path in ("/api/studies", "/api/studies/t", "/studies/t", "/docs", "/openapi.json", "/assets/plotly.min.js"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": "Basic x"}):
            r = httpx.get(base + path, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer" and set(r.json()) == {"error"}
    r = httpx.get(base + "/api/studies", cookies={"prunetune_token": "wrong"}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(base + "/api/studies", json={"config": _digits_config("x")}, timeout=30)
    assert r.status_code == 401
    r = httpx.get(base + "/api/studies", headers=AUTH, timeout=30)
    assert r.status_code == 200 and [s["name"] for s in r.json()] == ["t"]
    assert r.json()[0]["candidates"] == 2 and r.json()[0]["front"] >= 1
    detail = httpx.get(base + "/api/studies/t", headers=AUTH, timeout=30).json()
    assert {c["kind"] for c in detail["candidates"]} == {"allocator", "uniform"} and detail["front"]
    trial = httpx.get(base + f"/api/studies/t/trials/{detail['front'][0]}", headers=AUTH, timeout=30).json()
    assert set(trial["phases"]) == {"apply", "train", "eval", "other"} and "prune" in trial["plan"]
    r = httpx.get(base + "/api/studies/nope", headers=AUTH, timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": "no study named 'nope'"})
    paths = httpx.get(base + "/openapi.json", headers=AUTH, timeout=30).json()["paths"]
    assert {"/api/studies", "/api/studies/{name}", "/api/studies/{name}/trials/{n}/export"} <= set(paths)
    assert "bearer" in str(paths["/api/studies"]["get"]["security"]).lower()


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("model", {"spec": "os.path:join"}, "model.spec 'os.path:join' is not registered on this server"),
        ("data", {"spec": "tests.evaluators.factories:small_loaders"}, "data.spec 'tests.evaluators.factories"),
        ("data", {"spec": "imagefolder:/etc"}, "data.spec 'imagefolder:/etc' is not registered"),
        ("model", {"spec": "zoo:resnet20", "weights": "/etc/passwd"}, "model.weights names a file on the server"),
        ("model", {"spec": "zoo:resnet20", "code": "import os"}, "config.model.code: Extra inputs are not permitted"),
        ("ray", {"address": "10.0.0.1:6379"}, "ray.address is the worker's to choose"),
    ],
)
def test_a_submission_naming_what_the_server_does_not_register_is_refused(
    served: tuple[str, Path], section: str, value: dict[str, Any], message: str
) -> None:
    base, db = served
    before = dump(db)
    config = {**_digits_config("evil"), section: value}
    r = httpx.post(base + "/api/studies", headers=AUTH, json={"config": config}, timeout=30)
    assert r.status_code == 422 and message in r.json()["error"] and "\n" not in r.json()["error"]
    assert dump(db) == before  # nothing stored
    assert httpx.get(base + "/api/submissions", headers=AUTH, timeout=30).json() == []


def test_an_oversize_body_is_refused_before_it_is_read(served: tuple[str, Path]) -> None:
    base, db = served
    before = dump(db)
    big = {"config": {**_digits_config("big"), "space": {"ignored_layers": ["x" * 100] * 1000}}}
    r = httpx.post(base + "/api/studies", headers=AUTH, json=big, timeout=30)
    assert (r.status_code, r.json()) == (413, {"error": "request body over 65536 bytes"})
    chunks = (b"x" * 8192 for _ in range(20))  # no Content-Length: counted as it arrives
    r = httpx.post(base + "/api/studies", headers={**AUTH, "Content-Type": "application/json"}, content=chunks)
    assert r.status_code == 413
    assert dump(db) == before


def test_an_exported_trial_loads_and_gives_the_stored_accuracy(served: tuple[str, Path], tmp_path: Path) -> None:
    from evaluators import Context, evaluate_accuracy, load_data
    from search import load_exported

    base, _ = served
    detail = httpx.get(base + "/api/studies/t", headers=AUTH, timeout=30).json()
    trial = detail["front"][0]
    stored = next(c["accuracy"] for c in detail["candidates"] if c["trial"] == trial)
    r = httpx.get(base + f"/api/studies/t/trials/{trial}/export", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert sorted(z.namelist()) == ["model.json", "plan.json", "weights.safetensors"]
        z.extractall(tmp_path / "export")
    model = load_exported(tmp_path / "export")
    accuracy, _ = evaluate_accuracy(model, Context(data=load_data("digits"), batch_size=64))
    assert accuracy == pytest.approx(stored, abs=1e-9)


def test_a_submitted_study_is_run_by_a_worker(served: tuple[str, Path], artifacts: Path, tmp_path: Path) -> None:
    import shutil

    base, db = served
    r = httpx.post(base + "/api/studies", headers=AUTH, json={"config": _digits_config("submitted")}, timeout=30)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    sid = r.json()["id"]
    again = httpx.post(base + "/api/studies", headers=AUTH, json={"config": _digits_config("submitted")}, timeout=30)
    assert again.status_code == 409
    shutil.copytree(artifacts / "baselines", tmp_path / "worker-artifacts" / "baselines")  # no training again
    argv = ["worker", "--storage", f"sqlite:///{db}", "--artifacts-dir", str(tmp_path / "worker-artifacts")]
    assert main([*argv, "--once"]) == 0
    sub = httpx.get(base + f"/api/submissions/{sid}", headers=AUTH, timeout=30).json()
    assert (sub["status"], sub["error"]) == ("done", None)
    study = httpx.get(base + "/api/studies/submitted", headers=AUTH, timeout=30).json()
    assert study["study"]["candidates"] == 2 and {c["status"] for c in study["candidates"]} == {"COMPLETE"}
    assert study["front"]
    live = httpx.get(base + "/api/studies/submitted/figures/front", headers=AUTH, timeout=30).json()
    assert live["candidates"] == 2


def test_the_served_page_redraws_the_front_without_reload(served: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    from storage import StudyStore

    exe = chromium()
    base, db = served
    requests: list[str] = []
    errors: list[str] = []
    points = "() => document.getElementById('pt-front')._fullData.filter(t => t.xaxis === 'x' && t.meta && " \
        "t.meta.role === 'candidates').reduce((n, t) => n + t.x.length, 0)"  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/studies/t?token={TOKEN}", wait_until="load", timeout=90_000)
            assert page.url == f"{base}/studies/t"  # the token went into a cookie, out of the address bar
            page.wait_for_function("() => document.getElementById('pt-front')?._fullLayout", timeout=30_000)
            assert page.evaluate(points) == 2
            store = StudyStore(f"sqlite:///{db}")  # a worker finishes a candidate meanwhile
            sid = store.study("t").id
            cid = store.reserve(sid, '{"prune": {}}', "live-candidate", trial_number=99, kind="sampled")
            store.finish(cid or 0, "COMPLETE", accuracy=0.5, cost={"macs": 1e5, "params": 1e4, "bytes": 4e4})
            page.wait_for_function(f"() => ({points})() === 3", timeout=30_000)
            assert page.inner_text("#pt-count") == "3"
            page.goto(f"{base}/docs", wait_until="load", timeout=60_000)
            page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI drew the operations
        finally:
            browser.close()
    assert all(u.startswith(base) for u in requests), [u for u in requests if not u.startswith(base)]
    assert errors == []


def test_serve_refuses_to_start_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRUNETUNE_TOKEN", raising=False)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    short = tmp_path / "short"
    short.write_text("abc\n")
    for extra in ([], ["--host", "0.0.0.0"], ["--token-file", str(short)], ["--token-file", str(tmp_path / "no")]):
        assert main(["serve", "--storage", url, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("prunetune: error: ") and err.count("\n") == 1
    monkeypatch.setenv("PRUNETUNE_TOKEN", "short")
    assert main(["serve", "--storage", url, "--host", "0.0.0.0"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()  # refused before the store is touched


def test_prunetune_serve_listens_on_loopback_with_the_token_from_a_file(existing: Path, tmp_path: Path) -> None:
    db = _copy(existing, tmp_path / "cli.db")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    port = free_port()
    cli = Path(sys.executable).with_name("prunetune")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "search.cli"]
    args = ["serve", "--storage", f"sqlite:///{db}", "--port", str(port), "--token-file", str(token)]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/studies", headers=AUTH, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prunetune serve did not answer within 60 s"
                time.sleep(0.3)
        assert r.status_code == 200 and [s["name"] for s in r.json()] == ["t"]
        assert httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=5).status_code == 401
    finally:
        stop(proc)
