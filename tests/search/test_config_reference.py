"""docs/config.md is the reference the config models generate: it fails here when the two drift apart."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from search._config import Config
from search._reference import config_reference, table_reference
from spaces.dimensions import DIMENSIONS

DOC = Path(__file__).parents[2] / "docs" / "config.md"


def test_docs_config_md_matches_the_models() -> None:
    assert DOC.read_text() == config_reference(), "docs/config.md is out of date: scripts/config_reference.py --write"


def test_every_key_has_a_row_with_its_default_and_description() -> None:
    text = config_reference()
    for name, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, f in model.model_fields.items():
            assert f"| `{key}` |" in text, f"{name}.{key}"
            assert f.description, f"{name}.{key} has no description (the reference and --help show it)"
    row = next(line for line in text.splitlines() if line.startswith("| `max_ratio` |"))
    assert row.startswith("| `max_ratio` | float (> 0, < 1) | `0.8` | largest prune ratio")
    assert DIMENSIONS.get("prune").options.model_fields["max_ratio"].default == 0.8  # type: ignore[union-attr]  # one default, in the table's model
    for key in DIMENSIONS.builtins:  # every built-in dimension with options has its table, every key a row
        options = DIMENSIONS.get(key).options
        if options is not None:
            section = text.split(f"## [space.{key}]\n", 1)[1].split("\n## ", 1)[0]
            assert all(f"| `{k}` |" in section and f.description for k, f in options.model_fields.items())


def test_a_plugin_table_renders_like_a_section() -> None:
    class Options(BaseModel):
        """The toy's options."""

        model_config = ConfigDict(extra="forbid")
        share: float = Field(0.5, ge=0, le=1, description="a share")

    assert table_reference("[space.toy]", Options).splitlines() == [
        "## [space.toy]",
        "",
        "The toy's options.",
        "",
        "| key | type | default | what it does |",
        "| --- | --- | --- | --- |",
        "| `share` | float (≥ 0, ≤ 1) | `0.5` | a share |",
    ]
