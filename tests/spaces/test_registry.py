"""The one generic registry: built-ins by path, registrations, entry points of installed packages, errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace as Thing  # the contract here: anything with a name

import pytest

from spaces import PlanError, Registry


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on ``sys.path`` holding a real distribution (a dist-info with entry points) and its module."""
    (tmp_path / "toy_things.py").write_text(
        "from types import SimpleNamespace as Thing\n"
        "def big():\n    return Thing(name='big', size=9)\n"
        "def made():\n    return Thing(name='made', size=3)\n"
        "broken = 'not a thing'\n"
    )
    info = tmp_path / "toy_things-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-things\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[prunetune.test_things]\nbig = toy_things:big\nbroken = toy_things:broken\nmissing = toy_nowhere:x\n"
    )
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("toy_things", None)


def test_builtins_load_on_first_use_and_registrations_follow(site: Path) -> None:
    reg: Registry[Thing] = Registry("thing", Thing, builtins={"made": "toy_things:made"})
    assert reg.names() == ("made",) and "toy_things" not in sys.modules  # not imported yet
    assert reg.get("made") == Thing(name="made", size=3)
    reg.register(Thing(name="small", size=1))
    reg.register(Thing(name="first"), before="made")
    assert reg.names() == ("first", "made", "small") and "small" in reg
    with pytest.raises(ValueError, match="thing 'small' is already registered"):
        reg.register(Thing(name="small", size=2))
    assert reg.register(Thing(name="small", size=2), replace=True).size == 2
    with pytest.raises(TypeError, match="a thing must be a SimpleNamespace, got int"):
        reg.register(5)  # type: ignore[arg-type]
    reg.unregister("first")
    assert [t.name for t in reg.loaded()] == ["made", "small"]


def test_an_unknown_name_is_the_registrys_one_line_error() -> None:
    reg: Registry[Thing] = Registry("thing", Thing, error=PlanError, what="space.thing")
    reg.register(Thing(name="a"))
    with pytest.raises(PlanError, match=r"^space.thing must be one of a, got 'b'$"):
        reg.get("b")


def test_entry_points_register_and_a_broken_one_is_reported(site: Path) -> None:
    reg: Registry[Thing] = Registry("thing", Thing, group="prunetune.test_things")
    assert reg.get("big") == Thing(name="big", size=9)
    assert reg.names() == ("big",)
    problems = reg.problems()
    assert set(problems) == {"toy_things:broken", "toy_nowhere:x"}
    assert problems["toy_things:broken"] == "TypeError: a thing must be a SimpleNamespace, got str"
    assert problems["toy_nowhere:x"].startswith("ModuleNotFoundError: No module named 'toy_nowhere'")
