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
            "space.rank.method": "tucker2",
            "search.objectives": ["accuracy", "params"],
            "budget.bytes": "8MB",
        },
    )
    assert cfg.search.candidates == 7 and cfg.space.rank is True and cfg.search.objectives == ["accuracy", "params"]
    assert cfg.space.method == "tucker2" and cfg.space.active() == ["prune", "rank"]
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
        (MINIMAL, {"space.prune.max_ratio": "1.5"}, "[space.prune] max_ratio: Input should be less than 1 (got '1.5')"),
        (MINIMAL + "[space.prune]\nmax_rato = 0.5\n", {}, "'space.prune.max_rato'; did you mean 'max_ratio'?"),
        (MINIMAL + "[space]\nquantize = 'int3'\n", {}, "space.quantize must be one of none, weights, weights+"),
        (MINIMAL, {"search.objectives": ["macs", "accuracy"]}, "objectives must start with 'accuracy'"),
        (
            MINIMAL,
            {"space.rank.method": "svd", "space.bits.activations": "false"},
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


OLD_SPACE = MINIMAL + '[space]\nmax_ratio = 0.6\nsample_by = "stages"\nrank = true\nmethod = "tt"\nquantize = "none"\n'


def test_the_flat_keys_of_older_configs_load_into_their_tables_with_one_note_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from search import _config

    _config._noted.clear()
    with caplog.at_level("WARNING", logger="prunetune"):
        old = load_config(_write(tmp_path, OLD_SPACE))
    tables = '[space.prune]\nmax_ratio = 0.6\nsample_by = "stages"\n[space.rank]\nmethod = "tt"\n'
    new = load_config(_write(tmp_path, MINIMAL + tables))
    assert old.space == new.space and old.space.active() == ["prune", "rank"]
    flat = (old.space.max_ratio, old.space.sample_by, old.space.method, old.space.quantize)
    assert flat == (0.6, "stages", "tt", "none")
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 5 and all(n.startswith("prunetune: note: space.") and "\n" not in n for n in notes)
    assert "prunetune: note: space.max_ratio is read as [space.prune] max_ratio; write it there" in notes
    caplog.clear()
    with caplog.at_level("WARNING", logger="prunetune"):
        load_config(_write(tmp_path, OLD_SPACE))
    assert not caplog.records  # once per process


def test_one_default_per_option_and_a_stored_study_of_either_form_reads_its_ranks() -> None:
    from search.operations._report_data import _rank_options
    from spaces.dimensions import dimension

    PruneOptions = dimension("prune").options
    assert PruneOptions is not None
    cfg = load_config(None, {"model.spec": "zoo:resnet20", "data.spec": "digits", "budget.macs": "50%"})
    assert cfg.space.max_ratio == PruneOptions().max_ratio and cfg.space.active() == ["prune"]
    stored = cfg.space.model_dump(mode="json")
    assert stored["prune"] == {"max_ratio": PruneOptions().max_ratio, "sample_by": "groups"}
    assert "max_ratio" not in stored  # the stored spec holds the tables
    assert _rank_options({"rank": {"method": "tucker2", "methods": []}}) == (True, "tucker2")
    assert _rank_options({"rank": True, "method": "tt"}) == (True, "tt")  # a study stored before the tables
    assert _rank_options({"importance": "group_l2"}) == (False, "svd")


def test_a_training_recipe_is_one_class_and_one_registration(tmp_path: Path) -> None:
    """A registered recipe is a valid ``evaluate.recipe``, and its steps run after the BN recalibration."""
    from search._recipes import RECIPES, TrainingRecipe, register_recipe
    from search.preparation._prepare import preparation

    class Twice(TrainingRecipe):
        name = "twice"
        needs_teacher = True

        def steps(self, evaluate: object) -> list:
            from evaluators import BNRecalibration

            return [BNRecalibration(1)]

    with pytest.raises(ValueError, match="recipe must be one of finetune, blockwise"):
        load_config(_write(tmp_path, MINIMAL), {"evaluate.recipe": "twice"})
    register_recipe(Twice)
    try:
        cfg = load_config(_write(tmp_path, MINIMAL), {"evaluate.recipe": "twice"})
        assert cfg.evaluate.needs_teacher(0.0) and [type(s).__name__ for s in preparation(cfg)] == [
            "BNRecalibration",
            "BNRecalibration",
        ]
    finally:
        RECIPES.unregister("twice")
