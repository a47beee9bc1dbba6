"""``prunetune run`` on a language model (``task = "decoder"``): a real study in a real SQLite file.

A tiny Llama-style teacher is trained on the standard library's source in
about a second (cached in the module's artifacts folder), then searched under a
memory budget: every candidate's memory is its exact cost and within the cap,
the stored front is the Pareto front of (perplexity, memory), a stored
candidate rebuilt from base model + plan + weights gives its stored perplexity
again, and front, status, report and export read the study.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from search.cli import main
from search.tasks._decoder_config import load_decoder_config
from search.tasks._decoder_study import DecoderStudy, pick
from search.tasks._decoder_view import pick_with_ties
from spaces import CandidateKind, Plan, Status
from storage import CandidateRow, StudyStore, load_sample_scores

CONFIG = """task = "decoder"
[model.teacher]
layers = 2
width = 32
mlp = 64
heads = 4
kv_heads = 2
steps = 20
[data]
max_bytes = 60000
[budget]
memory = "75%"
context = 64
[evaluate]
recovery_steps = 3
context = 32
windows = 4
rescore_top = 2
rescore_steps = 12
[search]
candidates = 6
floor = "60%"
artifacts_dir = "{art}"
[storage]
url = "sqlite:///{db}"
"""


def write_config(folder: Path, **replace: str) -> Path:
    text = CONFIG.format(art=folder / "artifacts", db=folder / "study.db")
    for old, new in replace.items():
        text = text.replace(old, new)
    path = folder / "lm.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decoder-study")
    cfg = write_config(folder)
    assert main(["run", str(cfg), "--quiet"]) == 0
    return cfg


def test_every_candidate_is_within_the_budget_at_its_exact_cost_and_the_front_is_perplexity_against_memory(
    ran: Path,
) -> None:
    study = DecoderStudy(load_decoder_config(ran)).load()
    store = StudyStore(study.cfg.storage.url)
    info = store.study("lm")
    rows = store.candidates(info.id)
    assert len(rows) == 6 and all(r.status is Status.COMPLETE for r in rows)
    assert [r.kind for r in rows[:3]] == [CandidateKind.UNIFORM, CandidateKind.GLOBAL, CandidateKind.GLOBAL]
    cap = study.space.memory_limit(0.75)
    for r in rows:
        cost = study.space.cost(Plan.from_json(r.plan))
        assert r.memory == cost.memory_bytes <= cap and r.bytes == cost.weight_bytes and r.params == cost.params
        assert r.perplexity is not None and 1 < r.perplexity < 256  # better than a uniform guess over bytes
    assert info.base_cost["memory"] == study.space.dense.memory_bytes
    assert sorted(r.id for r in store.front(info.id)) == sorted(r.id for r in rows if not dominated(r, rows))
    trials = store.optuna_storage().get_all_trials(store.optuna_storage().get_study_id_from_name("lm"))
    told = [t for t in trials if t.values is not None]
    assert sorted(t.values[0] for t in told) == sorted(r.perplexity_after(3) for r in rows)  # type: ignore[misc]


def dominated(b: CandidateRow, rows: list[CandidateRow]) -> bool:
    """The front's rule, by hand: another candidate measured after as many recovery steps as ``b``'s longest
    is there no worse in perplexity and memory, and better in one."""
    mine = (b.perplexity_after(b.top_steps), b.memory)
    for a in rows:
        theirs = (a.perplexity_after(b.top_steps), a.memory)
        if a.id != b.id and theirs[0] is not None and all(x <= y for x, y in zip(theirs, mine, strict=True)):  # type: ignore[operator]
            if theirs != mine:
                return True
    return False


def test_the_best_are_recovered_again_longer_and_the_pick_is_made_among_them(ran: Path) -> None:
    from evaluators._text import from_losses, window_losses

    study = DecoderStudy(load_decoder_config(ran)).load()
    rows = study.store.candidates(study.store.study("lm").id)
    first = sorted(rows, key=lambda r: r.perplexity_after(3) or 0.0)
    rescored = [r for r in rows if r.top_rung == 1]
    assert sorted(r.id for r in rescored) == sorted(r.id for r in first[:2])  # the two lowest after 3 steps
    for r in rescored:
        assert r.top_steps == 12 and r.perplexity == pytest.approx(r.perplexity_after(12))
    front = study.store.front(study.store.study("lm").id)
    chosen = pick_with_ties(front)
    assert chosen is not None and chosen.best.id == min(rescored, key=lambda r: r.perplexity or 0.0).id
    best, e = chosen.best, study.cfg.evaluate
    losses = window_losses(study.candidate_model(best), study.text.validation, context=e.context, max_windows=4)
    assert len(losses) == 4 and from_losses(losses) == pytest.approx(best.perplexity, rel=1e-9)  # the longer recovery's
    kept = load_sample_scores(best.artifact)  # type: ignore[arg-type]
    assert kept is not None and set(kept) == {"loss"} and kept["loss"] == pytest.approx(losses, abs=1e-6)
    for r in front:  # the ties, by hand: per-window differences on the same windows, under 2 standard errors
        theirs = load_sample_scores(r.artifact) if r.top_rung == best.top_rung and r.id != best.id else None  # type: ignore[arg-type]
        if theirs is None:
            assert r.id not in chosen.tied
            continue
        d = theirs["loss"] - kept["loss"]
        assert (r.id in chosen.tied) == (abs(d.mean()) <= 2 * d.std(ddof=1) / np.sqrt(len(d))), r.id
    candidates = [best, *(r for r in front if r.id in chosen.tied)]
    assert chosen.row.id == min(candidates, key=lambda r: (r.memory, r.id)).id == pick(front).id  # type: ignore[union-attr]


def test_front_status_report_and_export_read_the_study(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.operations._decoder_export import load_decoder

    capsys.readouterr()
    assert main(["front", str(ran)]) == 0 and main(["status", str(ran)]) == 0
    out = capsys.readouterr().out
    assert "val ppl" in out and "memory %" in out and "pick: trial" in out and "paired standard errors" in out
    report = ran.parent / "report"
    assert main(["report", str(ran), "--out", str(report)]) == 0
    page = (report / "report.html").read_text()
    assert "Perplexity against memory" in page and "Plotly.newPlot" in page
    store = StudyStore(f"sqlite:///{ran.parent / 'study.db'}")
    sid = store.study("lm").id
    assert len((report / "front.csv").read_text().strip().splitlines()) == 1 + len(store.front(sid))
    import pandas as pd

    marks = pd.read_csv(report / "front.csv", keep_default_na=False)
    assert list(marks["trial"][marks["pick"] == "*"]) == [pick(store.front(sid)).trial_number]  # type: ignore[union-attr]
    best = min(store.front(sid), key=lambda r: r.perplexity or 0.0)
    out_dir = ran.parent / "export"
    assert main(["export", str(ran), "--trial", str(best.trial_number), "--out", str(out_dir)]) == 0
    checks = json.loads((out_dir / "export.json").read_text())["onnx"]
    assert set(checks) == {"model.onnx", "model.int8.onnx", "model.int4.onnx"}
    assert checks["model.onnx"]["max_abs"] < 1e-4
    study = DecoderStudy(load_decoder_config(ran)).load()
    rebuilt, scored = load_decoder(study.model, out_dir), study.candidate_model(best)
    x = study.text.heldout[:32].unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=x).logits, scored(input_ids=x).logits)


def test_a_rerun_evaluates_a_released_candidate_first_and_continues_the_study(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, **{"candidates = 6": "candidates = 3"})
    assert main(["run", str(cfg), "--quiet"]) == 0
    store = StudyStore(f"sqlite:///{tmp_path / 'study.db'}")
    sid = store.study("lm").id
    first = [(r.id, r.perplexity) for r in store.candidates(sid)]
    plan = Plan(prune={"model.layers.0.mlp": 0.5})
    stopped = store.reserve(sid, plan.to_json(), plan.hash, worker="gone:1")
    store.release(sid, "gone:1")  # as an interrupted run leaves it
    assert main(["run", str(cfg), "--quiet", "--search.candidates", "5"]) == 0
    rows = store.candidates(sid)
    assert len(rows) == 5 and [(r.id, r.perplexity) for r in rows[:3]] == first  # the first run's, untouched
    retried = store.candidate(sid, id=stopped)
    assert retried.status is Status.COMPLETE and retried.attempts == 2 and retried.perplexity is not None


def test_per_layer_bits_are_searched_counted_in_memory_and_rebuilt_exactly(tmp_path: Path) -> None:
    from evaluators._text import perplexity

    cfg = write_config(
        tmp_path, **{"[evaluate]": "[space]\nbits = [8, 4]\n[evaluate]", 'memory = "75%"': 'memory = "60%"'}
    )
    assert main(["run", str(cfg), "--quiet"]) == 0
    study = DecoderStudy(load_decoder_config(cfg)).load()
    rows = study.store.candidates(study.store.study("lm").id)
    with_bits = [r for r in rows if Plan.from_json(r.plan).entries("bits")]
    seeds = [Plan.from_json(r.plan) for r in rows if r.kind is CandidateKind.UNIFORM]
    assert any(p.entries("bits") == {"model.layers.0": 4, "model.layers.1": 4} for p in seeds)  # every layer at 4
    assert any(r.kind is CandidateKind.SAMPLED for r in with_bits)  # and the sampler proposes bits too
    for r in rows:  # the memory counts the bits exactly, and every plan is within the cap
        assert r.memory == study.space.cost(Plan.from_json(r.plan)).memory_bytes <= study.space.memory_limit(0.6)
    row = with_bits[0]
    model, e = study.candidate_model(row), study.cfg.evaluate
    assert perplexity(model, study.text.validation, context=e.context, max_windows=e.windows) == pytest.approx(
        row.perplexity, rel=1e-9
    )


def test_a_budget_only_bits_reach_is_searched_with_bits_and_refused_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # this teacher's smallest float plan is 56.9 % of its memory; every layer at 4 bits goes down to 49.4 %
    budget = {'memory = "75%"': 'memory = "53%"', 'floor = "60%"': 'floor = "50%"'}
    for sub in ("floats", "bits"):
        (tmp_path / sub).mkdir()
    refused = write_config(tmp_path / "floats", **budget)
    assert main(["run", str(refused), "--quiet"]) == 2
    assert "below the smallest plan" in capsys.readouterr().err
    cfg = write_config(tmp_path / "bits", **budget, **{"[evaluate]": "[space]\nbits = [8, 4]\n[evaluate]"})
    assert main(["run", str(cfg), "--quiet"]) == 0
    study = DecoderStudy(load_decoder_config(cfg)).load()
    rows = study.store.candidates(study.store.study("lm").id)
    assert len(rows) == 6 and all(r.status is Status.COMPLETE for r in rows)
    for r in rows:  # no float plan fits: every candidate quantizes a layer, and is within the cap
        plan = Plan.from_json(r.plan)
        assert plan.entries("bits") and r.memory == study.space.cost(plan).memory_bytes
        assert r.memory <= study.space.memory_limit(0.53)


def test_low_rank_projections_are_searched_whitened_counted_exactly_and_rebuilt(tmp_path: Path) -> None:
    from evaluators._text import perplexity
    from spaces.decoder import resolve

    cfg = write_config(
        tmp_path, **{"[evaluate]": "[space]\nrank = true\n[evaluate]", 'memory = "75%"': 'memory = "60%"'}
    )
    assert main(["run", str(cfg), "--quiet"]) == 0
    study = DecoderStudy(load_decoder_config(cfg)).load()
    rows = study.store.candidates(study.store.study("lm").id)
    factored = [r for r in rows if resolve(study.model, Plan.from_json(r.plan), counts_only=True).ranks]
    seeds = [Plan.from_json(r.plan) for r in rows if r.kind is CandidateKind.UNIFORM]
    assert any(set(p.entries("rank").values()) == {0.25} for p in seeds)  # every projection at a quarter
    assert {m for r in factored for m in Plan.from_json(r.plan).entries("method").values()} == {"whitened"}
    assert any(r.kind is CandidateKind.SAMPLED for r in factored)  # and the sampler proposes ranks too
    for r in rows:  # the memory counts the factor chains exactly, and every plan is within the cap
        assert r.memory == study.space.cost(Plan.from_json(r.plan)).memory_bytes <= study.space.memory_limit(0.6)
    row = factored[0]
    model, e = study.candidate_model(row), study.cfg.evaluate  # plan + weights, without the calibration
    assert perplexity(model, study.text.validation, context=e.context, max_windows=e.windows) == pytest.approx(
        row.perplexity, rel=1e-9
    )


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"context = 64": "context = 0"}, "config key 'budget.context': Input should be greater than or equal to 1"),
        ({'memory = "75%"': 'memory = "20%"'}, "is below the smallest plan"),
        ({"[data]": '[model]\nspec = "hf:/no/such/dir"\n[data]'}, "hf model directory '/no/such/dir' does not exist"),
        ({"candidates = 6": "candidats = 6"}, "unknown config key 'search.candidats'; did you mean 'candidates'?"),
        ({'task = "decoder"': 'task = "speech"'}, "config key 'task' must be one of vision, decoder, got 'speech'"),
        ({"candidates = 6": 'candidates = 6\nsampler = "cmaes"'}, "config key 'search.sampler': Input should be 'tpe'"),
        ({'memory = "75%"': 'memory = "150%"'}, 'budget.memory must be a share of the dense model like "50%"'),
        (
            {"[data]": '[model]\nspec = "hf-tiny:gpt2"\n[space]\nbits = [8]\n[data]'},
            "the gpt2 layout's projections cannot be quantized yet",
        ),
        (
            {"[data]": '[model]\nspec = "hf-tiny:gpt2"\n[space]\nrank = true\n[data]'},
            "the gpt2 layout's projections cannot be factorized yet",
        ),
        (
            {"[data]": '[model]\nspec = "hf-tiny:gpt2"\n[data]', "context = 64": "context = 512"},
            "budget.context 512 exceeds the model's 256 learned positions",
        ),
        ({"[data]": '[model]\nspec = "hf-tiny:bert"\n[data]'}, "is an encoder (bert): language-model studies"),
    ],
)
def test_bad_decoder_input_is_one_line_exit_2_and_writes_no_study(
    tmp_path: Path, replace: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, **replace)
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    db = tmp_path / "study.db"
    assert not db.exists() or StudyStore(f"sqlite:///{db}").study_names() == []


def test_a_model_that_needs_remote_code_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "remote"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Model"}}))
    cfg = write_config(tmp_path, **{"[data]": f'[model]\nspec = "hf:{model}"\n[data]'})
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs its own code (auto_map in config.json); PruneTune never runs code from a model directory" in err
    assert len(err.strip().splitlines()) == 1


def test_the_example_config_loads_with_the_benchs_teacher() -> None:
    cfg = load_decoder_config(Path(__file__).parents[2] / "examples" / "tiny_llama.toml")
    assert cfg.search.study == "tiny-llama-memory50" and cfg.budget.memory == "50%" and cfg.budget.context == 1024
    teacher = cfg.model.teacher  # bench_llm.py's defaults: the two share one cached teacher
    assert (teacher.layers, teacher.width, teacher.mlp, teacher.heads, teacher.kv_heads) == (4, 128, 384, 8, 2)


def test_vision_commands_and_objectives_refuse_a_language_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search._config import load_config

    cfg = write_config(tmp_path)
    assert main(["finalize", str(cfg), "--trial", "0"]) == 2
    assert "is a task = 'decoder' config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="objective 'perplexity' belongs to language-model studies"):
        load_config(None, {"model.spec": "zoo:resnet20", "data.spec": "digits", "budget.macs": "50%",
                           "search.objectives": ["accuracy", "perplexity"]})  # fmt: skip


def test_the_service_serves_the_study_as_perplexity_against_memory(ran: Path) -> None:
    import httpx

    from search.service._app import create_app
    from tests.search.servers import uvicorn_thread

    token = "t0ken-for-the-decoder-tests-0123"
    auth = {"Authorization": f"Bearer {token}"}
    with uvicorn_thread(create_app(f"sqlite:///{ran.parent / 'study.db'}", token)) as base:
        page = httpx.get(f"{base}/studies/lm", headers=auth, timeout=60)
        assert page.status_code == 200 and "Perplexity against memory" in page.text
        figure = httpx.get(f"{base}/api/studies/lm/figures/front", headers=auth, timeout=60).json()
        assert figure["candidates"] == 6 and [t["name"] for t in figure["figure"]["data"]][:2] == [
            "candidates",
            "front",
        ]
        listed = httpx.get(f"{base}/api/studies", headers=auth, timeout=60).json()
        assert [s["name"] for s in listed] == ["lm"]
        export = httpx.get(f"{base}/api/studies/lm/trials/0/export", headers=auth, timeout=60)
        assert export.status_code == 409 and "prunetune export CONFIG" in export.text


def test_profile_learns_the_decoders_speed_once_and_a_study_predicts_every_candidates_tokens_per_second(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import spaces.decoder
    from spaces.decoder import DecoderLatency, resolve

    cfg = write_config(tmp_path, **{"candidates = 6": "candidates = 3"})
    assert main(["profile", str(cfg), "--runs", "1"]) == 0
    first = capsys.readouterr().out
    assert "measured now and stored" in first and "held out" in first and "decode ms per token" in first
    assert main(["profile", str(cfg), "--runs", "1"]) == 0
    assert "read from the store" in capsys.readouterr().out

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("the study measured again what the store holds")

    monkeypatch.setattr(spaces.decoder, "profile_decoder", no_measuring)  # the trained teacher has the same key
    assert main(["run", str(cfg), "--quiet", "--evaluate.speed", "true"]) == 0
    assert "decode tok/s" in capsys.readouterr().out
    study = DecoderStudy(load_decoder_config(cfg)).load()
    store = study.store
    [stored] = [DecoderLatency.from_json(p) for p in [store.profile(k) for k in _profile_keys(store)] if p]
    for r in store.candidates(store.study("lm").id):
        plan = Plan.from_json(r.plan)
        expected = stored.tokens_per_second(resolve(study.model, plan, counts_only=True), study.space.cost(plan))
        assert (r.device_latency or {})["decode_tps"] == pytest.approx(expected[1], rel=1e-12)
        assert (r.device_latency or {})["prefill_tps"] == pytest.approx(expected[0], rel=1e-12)
    assert main(["profile", str(cfg), "--batch", "4"]) == 2  # a decoder is profiled at batch 1
    err = capsys.readouterr().err
    assert "batch 1" in err and len(err.strip().splitlines()) == 1


def _profile_keys(store: StudyStore) -> list[str]:
    from sqlalchemy import select

    from storage._schema import ProfileTable

    with store._session() as s:
        return list(s.scalars(select(ProfileTable.key)))


def _submitted(study: str, **sections: dict[str, object]) -> dict[str, object]:
    """The tests' decoder config (CONFIG) as the JSON a client submits, with ``sections`` merged in."""
    import tomllib

    data = tomllib.loads(CONFIG.format(art="unused", db="unused"))
    del data["storage"], data["search"]["artifacts_dir"]  # the server's and the worker's
    data["search"] |= {"study": study, "candidates": 3}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"spec": "hf:/etc"}}, "model.spec 'hf:/etc' is not registered on this server"),
        ({"storage": {"url": "sqlite:////tmp/elsewhere.db"}}, "storage.url is the server's to choose"),
        ({"search": {"artifacts_dir": "/tmp"}}, "search.artifacts_dir is the worker's to choose"),
        ({"budget": {"memory": "150%"}}, "budget.memory must be a share of the dense model"),
        ({"space": {"code": "import os"}}, "config.space.code: Extra inputs are not permitted"),
    ],
)
def test_a_language_model_submission_naming_what_the_server_does_not_take_is_refused(
    tmp_path: Path, sections: dict[str, dict[str, object]], message: str
) -> None:
    import httpx

    from search.service._app import create_app
    from tests.search.servers import uvicorn_thread

    token, db = "t0ken-for-the-decoder-tests-0123", tmp_path / "served.db"
    with uvicorn_thread(create_app(f"sqlite:///{db}", token)) as base:
        r = httpx.post(f"{base}/api/studies", headers={"Authorization": f"Bearer {token}"},
                       json={"config": _submitted("evil", **sections)}, timeout=30)  # fmt: skip
        assert r.status_code == 422 and message in r.json()["error"] and "\n" not in r.json()["error"]
        assert httpx.get(f"{base}/api/submissions", headers={"Authorization": f"Bearer {token}"}).json() == []


def test_a_submitted_language_model_study_is_run_by_a_worker_and_served(tmp_path: Path) -> None:
    import httpx

    from search.service._app import create_app
    from tests.search.servers import uvicorn_thread

    token, db = "t0ken-for-the-decoder-tests-0123", tmp_path / "served.db"
    auth = {"Authorization": f"Bearer {token}"}
    with uvicorn_thread(create_app(f"sqlite:///{db}", token)) as base:
        odd = httpx.post(f"{base}/api/studies", headers=auth, json={"config": {"task": "audio"}}, timeout=30)
        assert odd.status_code == 422 and "task must be one of vision, decoder, got 'audio'" in odd.json()["error"]
        r = httpx.post(f"{base}/api/studies", headers=auth, json={"config": _submitted("lm-sub")}, timeout=30)
        assert r.status_code == 202 and r.json()["status"] == "queued"
        argv = ["worker", "--storage", f"sqlite:///{db}", "--artifacts-dir", str(tmp_path / "worker")]
        assert main([*argv, "--once"]) == 0
        sub = httpx.get(f"{base}/api/submissions/{r.json()['id']}", headers=auth, timeout=30).json()
        assert (sub["status"], sub["error"]) == ("done", None)
        figure = httpx.get(f"{base}/api/studies/lm-sub/figures/front", headers=auth, timeout=60).json()
        assert figure["candidates"] == 3
        page = httpx.get(f"{base}/studies/lm-sub", headers=auth, timeout=60)
        assert page.status_code == 200 and "Perplexity against memory" in page.text
    store = StudyStore(f"sqlite:///{db}")
    rows = store.candidates(store.study("lm-sub").id)
    assert len(rows) == 3 and all(r.status is Status.COMPLETE and r.perplexity for r in rows)
    assert all(Path(r.artifact or "").is_relative_to(tmp_path / "worker") for r in rows)  # the worker's folder
