"""A study's device profile: measured once per model, device, threads and batch, stored, reused; latency budgets
and ``round_to = "auto"`` in a real study (digits ResNet-20, SQLite store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search import Config, Search, load_config
from search.cli import main
from spaces import DeviceProfile, ModelSpace, Plan
from tests.search.conftest import ConfigMaker


def test_a_latency_budget_study_profiles_once_and_a_second_study_reads_the_store(
    make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = _reachable_share(load_config(make_config()))  # halfway between the fastest plan and the model
    cfg = make_config(budget__macs=None, budget__latency=f"{100 * share:.2f}%", search__candidates=2)
    s = Search(load_config(cfg)).prepare()
    p = s.prepared
    prof = p.space.profile
    assert prof is not None and p.store.profile(prof.key) is not None  # stored under its key
    assert p.base_cost.latency == pytest.approx(prof.predict(p.space, Plan()))
    limit = round(100 * share, 2) / 100 * p.base_cost.latency
    assert p.space.cost(p.uniform).latency <= limit  # the uniform seed is fitted onto the predicted latency

    def refuse(*args: object, **kwargs: object) -> DeviceProfile:
        raise AssertionError("the stored profile was measured again")

    monkeypatch.setattr("spaces.profile_space", refuse)
    other = Search(load_config(cfg, {"search.study": "second", "budget.latency": "99%"})).prepare().prepared
    assert other.space.profile == prof  # same model, device, threads, batch: read from the store
    s.run()
    rows = p.store.candidates(p.study_id)
    assert len(rows) == 2
    for r in rows:  # every candidate meets the cap in predicted latency
        assert p.space.cost(Plan.from_json(r.plan)).latency <= limit * (1 + 1e-9)


def test_a_latency_budget_with_ranks_profiles_the_chains_and_fits_factorized_plans(make_config: ConfigMaker) -> None:
    # the share comes from the very profile the study reads (same chains, threads and store): a second timing
    # on a busy machine can come out flatter than the first and put the cap out of reach
    share = _reachable_share(load_config(make_config(**{"space.rank__method": "svd"})), methods=["svd"])
    cfg = make_config(
        budget__macs=None, budget__latency=f"{100 * share:.2f}%", **{"space.rank__method": "svd"}, search__candidates=4,
        search__seed_plans=["allocator", "uniform"],  # the third and fourth candidates are sampled: ratios and ranks
    )  # fmt: skip
    s = Search(load_config(cfg)).prepare()
    p = s.prepared
    prof = p.space.profile
    assert prof is not None and prof.methods == ["svd"] and prof.factored  # the searched method's chains
    assert p.store.profile(prof.key) is not None and "layer1.0.conv1" in prof.factored
    s.run()
    rows = [r for r in p.store.candidates(p.study_id) if r.status == "COMPLETE"]
    plans = [Plan.from_json(r.plan) for r in rows]
    assert len(rows) == 4 and any(plan.rank for plan in plans)  # sampled plans factorize layers
    limit = round(100 * share, 2) / 100 * p.base_cost.latency
    for plan in plans:  # every candidate, factorized or not, meets the cap in predicted latency
        assert p.space.cost(plan).latency <= limit * (1 + 1e-9)


def _reachable_share(cfg: Config, methods: list[str] | None = None) -> float:
    """Profile the config's model into its store (as a study would, with the factor chains of ``methods``) and
    return a latency share, of the base model's, that its fastest plan meets: the budget of a test that holds on
    any machine."""
    import numpy as np
    import torch

    from search.preparation._profile import device_profile, structure_space
    from storage import StudyStore

    space = structure_space(cfg)
    store = StudyStore(cfg.storage.url)
    threads = torch.get_num_threads()  # the study's own, so that it reads this profile rather than timing another
    prof, measured = device_profile(space, store, device=torch.device("cpu"), threads=threads, methods=methods)
    assert measured
    fastest = prof.predict_keep(space, np.ones(len(space.groups), dtype=np.int64))
    return (1 + fastest / prof.predict(space, Plan())) / 2


def test_round_to_auto_uses_the_multiple_the_profile_found(make_config: ConfigMaker) -> None:
    p = Search(load_config(make_config(space__round_to="auto"))).prepare().prepared
    assert p.space.profile is not None
    m = p.space.profile.multiple
    assert m in (1, 2, 4, 8, 16, 32)
    assert p.space.round_to == m and p.config.space.round_to == m
    assert p.store.study(p.study).spec.round_to == m  # the store records the multiple, not "auto"
    channels = [g.channels for g in p.space.groups]
    keep = p.space.keep_counts(p.uniform)
    assert all(k % m == 0 or k == c or c <= m for k, c in zip(keep, channels, strict=True))


def test_the_profile_command_measures_then_reads_the_store(
    make_config: ConfigMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config()
    assert main(["profile", str(cfg), "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured now and stored" in out and "channel multiple" in out and "calibration" in out
    assert main(["profile", str(cfg)]) == 0
    assert "read from the store" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget__latency": "-3ms"}, "budget latency must be a positive number"),
        ({"budget__latency": "3 parsecs"}, "unknown unit 'parsecs'"),
        (
            {"budget__latency": "50%", "space.bits__activations": False},
            "budget.latency is predicted for pruning and factor",
        ),
        ({"space__round_to": "fast"}, 'round_to must be an integer >= 1 or "auto"'),
        ({"evaluate__runtime": "tvm"}, "evaluate.runtime"),
        ({"evaluate__runtime": "onnxruntime", "evaluate__device": "cuda"}, "'onnxruntime' times the CPU, got evaluate"),
    ],
)
def test_bad_latency_settings_are_one_line_errors(
    make_config: ConfigMaker, capsys: pytest.CaptureFixture[str], overrides: dict[str, object], message: str
) -> None:
    assert main(["run", str(make_config(**overrides)), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_profile_is_never_shared_across_structures(make_config: ConfigMaker) -> None:
    import torch

    from search.preparation._profile import structure_space

    a = structure_space(load_config(make_config()))
    b = ModelSpace(a.model, a.example_inputs[0].repeat(1, 1, 2, 2))  # another input size: other shapes
    cpu = torch.device("cpu")
    key = DeviceProfile.key_for(a, cpu, threads=1, batch=1)
    assert key != DeviceProfile.key_for(b, cpu, threads=1, batch=1)
    assert key != DeviceProfile.key_for(a, cpu, threads=2, batch=1) != DeviceProfile.key_for(a, cpu, threads=1, batch=4)


def test_the_latency_objective_is_predicted_and_front_members_are_measured_beside_it(
    make_config: ConfigMaker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from storage import StudyStore

    cfg = make_config(search__objectives=["accuracy", "macs", "latency"], search__candidates=3)
    assert main(["run", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    c = load_config(cfg)
    store = StudyStore(c.storage.url)
    info = store.study(str(c.search.study))
    rows, front = store.candidates(info.id), {r.id for r in store.front(info.id)}
    assert len(rows) == 3 and front
    for r in rows:
        d = r.device_latency or {}
        assert d["predicted_ms"] > 0 and r.latency == d["predicted_ms"]  # the objective is the prediction
        assert not r.latency_ms  # nothing measured per candidate
        if r.id in front:  # measured end to end after the run, beside the prediction
            assert d["runs"] == 25 and d["p10_ms"] <= d["measured_ms"] <= d["p90_ms"]
            assert r.prediction_error == pytest.approx(abs(d["predicted_ms"] - d["measured_ms"]) / d["measured_ms"])
        else:
            assert "measured_ms" not in d
    assert f"latency: predicted vs measured on {len(front)} front members, median error" in out
    assert main(["report", str(cfg), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "measured_ms" in md and "latency: predicted vs measured on" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "measured_ms" in html and "latency: predicted vs measured on" in html


def test_a_study_in_onnxruntime_profiles_and_measures_its_front_there(
    make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate.runtime = "onnxruntime"``: the profile is ONNX Runtime's (its own key in the store) and the
    front members are exported and timed in ONNX Runtime beside their predictions."""
    import spaces
    from storage import StudyStore

    runtimes: list[str] = []
    measure = spaces.measure_latency

    def spy(*args: Any, **kwargs: Any) -> dict[str, float]:
        runtimes.append(kwargs.get("runtime", "torch"))
        return measure(*args, **kwargs)

    monkeypatch.setattr("spaces.measure_latency", spy)
    cfg = make_config(
        search__objectives=["accuracy", "macs", "latency"], search__candidates=2, evaluate__runtime="onnxruntime"
    )
    assert main(["run", str(cfg), "--quiet"]) == 0
    c = load_config(cfg)
    store = StudyStore(c.storage.url)
    front = store.front(store.study(str(c.search.study)).id)
    assert front and all((r.device_latency or {}).get("measured_ms", 0) > 0 for r in front)
    assert runtimes == ["onnxruntime"] * len(front)  # each front member measured once, in ONNX Runtime
    monkeypatch.setattr("spaces.profile_space", None)  # a second study reads the stored profile: none measured
    again = Search(load_config(cfg, {"search.study": "second"})).prepare().prepared.space.profile
    assert again is not None and again.runtime == "onnxruntime" and store.profile(again.key) is not None
