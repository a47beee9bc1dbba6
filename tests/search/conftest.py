"""Shared fixtures for search tests: one small digits ResNet-20 baseline per session, tiny configs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EPOCHS = 8  # the digits ResNet-20 baseline reaches ~96% in ~4 s


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evaluators import Recipe, load_data, train_baseline

    path = tmp_path_factory.mktemp("artifacts")
    base = train_baseline("zoo:resnet20", load_data("digits"), recipe=Recipe(epochs=EPOCHS), artifacts_dir=path)
    assert base.accuracy > 0.9
    return path


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


ConfigMaker = Callable[..., Path]


def write_config(root: Path, artifacts: Path, name: str = "run", **overrides: Any) -> Path:
    """A tiny, fast run config (digits, ResNet-20, 50% MACs at the cap, 4-step fine-tunes) in ``root``.

    Overrides are ``section__key=value``; ``None`` removes a key. The study's
    artifacts go to ``root/artifacts`` (its own weights files), with the
    session's cached baselines copied in, so no baseline is trained again.
    """
    own = root / "artifacts"
    if not (own / "baselines").is_dir():
        shutil.copytree(artifacts / "baselines", own / "baselines")
    artifacts = own
    sections: dict[str, dict[str, Any]] = {
        "model": {"spec": "zoo:resnet20", "train_epochs": EPOCHS},
        "data": {"spec": "digits"},
        "budget": {"macs": "50%"},
        "space.prune": {"max_ratio": 0.8},
        "evaluate": {"bn_batches": 2, "finetune_steps": 4, "eval_every": 2, "batch_size": 64},
        # floor = "cap": every candidate at the budget's edge (test_fidelity.py tests the range of levels)
        "search": {"candidates": 5, "study": "t", "artifacts_dir": str(artifacts), "floor": "cap"},
        "storage": {"url": f"sqlite:///{root / 'study.db'}"},
    }
    for key, value in overrides.items():
        section, _, k = key.partition("__")
        if value is None:
            sections[section].pop(k, None)
        else:
            sections.setdefault(section, {})[k] = value
    path = root / f"{name}.toml"
    path.write_text(_toml(sections))
    return path


@pytest.fixture
def make_config(tmp_path: Path, artifacts: Path) -> ConfigMaker:
    def make(name: str = "run", **overrides: Any) -> Path:
        return write_config(tmp_path, artifacts, name, **overrides)

    return make


@pytest.fixture(scope="session")
def existing(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Path:
    """A study with two candidates that bad commands must leave untouched (its config; ``study.db`` beside it)."""
    from search.cli import main

    root = tmp_path_factory.mktemp("existing")
    cfg = write_config(root, artifacts, search__candidates=2)
    assert main(["run", str(cfg), "--quiet"]) == 0
    return cfg


def dump(db: Path) -> list[str]:
    """Every row of a SQLite database, as SQL (what "untouched" is checked against)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return list(con.iterdump())


PG_URL = os.environ.get("PRUNETUNE_TEST_POSTGRES_URL")


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL server .ci/run starts (required in CI; the test is skipped elsewhere without one)."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PRUNETUNE_TEST_POSTGRES_URL (scripts/postgres.sh start)")
        pytest.skip('no PostgreSQL server: run `eval "$(bash scripts/postgres.sh start)"`')
    return PG_URL
