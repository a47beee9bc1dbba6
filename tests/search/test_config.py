"""The run configuration: TOML + pydantic, unknown keys refused, every key a flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from search._config import Config, config_flags, load_config
from search.cli._main import _parser
from spaces.dimensions import dimensions


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


MINIMAL = '[model]\nspec = "zoo:resnet20"\n[data]\nspec = "digits"\n[budget]\nmacs = "50%"\n'


def test_defaults_and_study_name_from_the_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.search.study == "c" and cfg.search.sampler == "tpe" and cfg.search.candidates == 30
    assert cfg.storage.url == "sqlite:///prunetune.db" and cfg.budget_dict() == {"macs": "50%"}


def test_every_key_is_a_run_flag_and_overrides_the_file(tmp_path: Path) -> None:
    keys = {k for k, _, _ in config_flags()}
    expected = {f"{s}.{k}" for s, f in Config.model_fields.items() for k in f.annotation.model_fields}  # type: ignore[union-attr]
    expected |= {f"space.{d.key}.{k}" for d in dimensions() if d.options is not None for k in d.options.model_fields}
    assert "space.depth.max_share" in expected  # a built-in dimension's table takes flags
    assert keys == expected and len(keys) > 30
    run = _parser().parse_args(["run", "x.toml", "--search.candidates", "7"])
    assert all(hasattr(run, k) for k in keys)
    cfg = load_config(
        _write(tmp_path, MINIMAL),
        {
            "search.candidates": "7",
            "space.rank": "true",
            "search.objectives": ["accuracy", "params"],
            "budget.bytes": "8MB",
        },
    )
    assert cfg.search.candidates == 7 and cfg.space.rank is True and cfg.search.objectives == ["accuracy", "params"]
    assert cfg.budget_dict() == {"macs": "50%", "bytes": "8MB"}


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            MINIMAL + "[search]\ncandidate = 3\n",
            {},
            "unknown config key 'search.candidate'; did you mean 'candidates'? valid keys here: allocator, "
            "artifacts_dir",
        ),
        (MINIMAL + "[serch]\n", {}, "unknown config key 'serch'"),
        (MINIMAL.replace('[budget]\nmacs = "50%"\n', "[budget]\n"), {}, "[budget] needs at least one of"),
        ('[data]\nspec = "digits"\n[budget]\nmacs = "5%"\n', {}, "config key 'model' is required"),
        (MINIMAL, {"space.max_ratio": "1.5"}, "config key 'space.max_ratio': Input should be less than 1"),
        (MINIMAL, {"search.objectives": ["macs", "accuracy"]}, "objectives must start with 'accuracy'"),
        (
            MINIMAL,
            {"space.rank": True, "space.quantize": "weights"},
            "[space]: bits and rank cannot be searched together (a factorized layer is not quantized): choose one",
        ),
        (MINIMAL, {"search.objectives": ["accuracy", "flops"]}, "config key 'search.objectives.1'"),
        ("model = [", {}, "not valid TOML"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        load_config(_write(tmp_path, text), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(("example", "floor"), [("digits.toml", "3%"), ("fashion_mnist.toml", "12.5%")])
def test_the_example_configs_are_valid_and_search_a_range_with_rungs(example: str, floor: str) -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / example)
    assert cfg.evaluate.rung_steps() == (50, 200) and cfg.search.floor == floor and cfg.budget.macs == "50%"


def test_the_quantization_example_searches_bits_under_a_bytes_budget_over_a_25x_range() -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "digits_quant.toml")
    assert (cfg.budget.bytes, cfg.budget.macs, cfg.search.floor) == ("25%", None, "1%")
    assert cfg.space.quantize == "weights+activations" and [o.value for o in cfg.search.objectives] == [
        "accuracy",
        "bytes",
    ]
