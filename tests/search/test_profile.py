"""A study's device profile: measured once per model, device, threads and batch, stored, reused; latency budgets
and ``round_to = "auto"`` in a real study (digits ResNet-20, SQLite store)."""

from __future__ import annotations

import pytest

from search import Search, load_config
from search.cli import main
from spaces import DeviceProfile, ModelSpace, Plan
from tests.search.conftest import ConfigMaker


def test_a_latency_budget_study_profiles_once_and_a_second_study_reads_the_store(
    make_config: ConfigMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(budget__macs=None, budget__latency="85%", search__candidates=2)
    s = Search(load_config(cfg)).prepare()
    p = s.prepared
    prof = p.space.profile
    assert prof is not None and p.store.profile(prof.key) is not None  # stored under its key
    assert p.base_cost.latency == pytest.approx(prof.predict(p.space, Plan()))
    limit = 0.85 * p.base_cost.latency
    assert p.space.cost(p.uniform).latency <= limit  # the uniform seed is fitted onto the predicted latency

    def refuse(*args: object, **kwargs: object) -> DeviceProfile:
        raise AssertionError("the stored profile was measured again")

    monkeypatch.setattr("spaces.profile_space", refuse)
    other = Search(load_config(cfg, {"search.study": "second", "budget.latency": "90%"})).prepare().prepared
    assert other.space.profile == prof  # same model, device, threads, batch: read from the store
    s.run()
    rows = p.store.candidates(p.study_id)
    assert len(rows) == 2
    for r in rows:  # every candidate meets the cap in predicted latency
        assert p.space.cost(Plan.from_json(r.plan)).latency <= limit * (1 + 1e-9)


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
        ({"budget__latency": "50%", "space__rank": True}, "budget.latency is predicted for pruning plans only"),
        ({"space__round_to": "fast"}, 'round_to must be an integer >= 1 or "auto"'),
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

    from search.drivers._profile import structure_space

    a = structure_space(load_config(make_config()))
    b = ModelSpace(a.model, a.example_inputs[0].repeat(1, 1, 2, 2))  # another input size: other shapes
    cpu = torch.device("cpu")
    key = DeviceProfile.key_for(a, cpu, threads=1, batch=1)
    assert key != DeviceProfile.key_for(b, cpu, threads=1, batch=1)
    assert key != DeviceProfile.key_for(a, cpu, threads=2, batch=1) != DeviceProfile.key_for(a, cpu, threads=1, batch=4)
