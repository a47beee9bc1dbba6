"""The configuration reference (docs/config.md), generated from the typed config models.

Every section of :class:`search.Config` becomes a table of its keys: the
type, the default (or "required") and the description the models declare,
so the reference is what the code validates. ``scripts/config_reference.py
--write`` writes it; ``tests/search/test_config_reference.py`` fails when the
file and the models drift apart. The built-in dimensions' ``[space.<key>]``
tables (:attr:`spaces.dimensions.Dimension.options`) follow ``[space]``;
plug-in dimensions document their own (:func:`table_reference` renders one
the same way).
"""

from __future__ import annotations

import enum
import inspect
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["config_reference", "table_reference"]

HEADER = """# Configuration reference

Generated from the config models (`search/_config.py`) by `scripts/config_reference.py --write`; a test fails
when this file and the code drift apart. A config is one TOML file; every key below can also be given as a
flag, `--section.key value` (e.g. `--search.candidates 10`), which wins over the file. Unknown keys are
one-line errors that name the nearest valid key.

A dimension with options has a table of its own, `[space.<key>]`, whose presence turns the dimension on; its
keys take flags too (`--space.depth.max_share 0.5`, which also turns it on). The built-in ones follow
`[space]`; plug-in dimensions (see `examples/plugins/`) document theirs (`table_reference` renders them like
this).
"""


def config_reference() -> str:
    """The Markdown reference of every section of the config."""
    from search._config import Config
    from spaces.dimensions import DIMENSIONS

    parts = [HEADER]
    for name, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        parts.append(table_reference(f"[{name}]", model))
        if name == "space":  # the built-in dimensions' own tables (a plug-in's would make the file differ)
            tables = [(key, DIMENSIONS.get(key).options) for key in DIMENSIONS.builtins]
            parts += [table_reference(f"[space.{key}]", opts) for key, opts in tables if opts is not None]
    return "\n".join([*parts, *_decoder_reference()])


DECODER_HEADER = """# Language-model studies (`task = "decoder"`)

A config whose first line is `task = "decoder"` is a language-model study (`search/tasks/_decoder_config.py`,
[llm.md](llm.md#searching-a-decoder-under-a-memory-budget)): a decoder's per-layer MLP widths, key-value groups
and depth searched under a memory budget, scored by validation perplexity. Its sections and keys, with the same
flags (`--budget.memory 30%`):
"""


def _decoder_reference() -> list[str]:
    """The sections of a ``task = "decoder"`` config (nested tables, such as ``[model.teacher]``, after theirs)."""
    from search.tasks._decoder_config import DecoderConfig

    parts = [DECODER_HEADER]
    for name, field in DecoderConfig.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        parts.append(table_reference(f"[{name}] (decoder)", model))
        for inner, f in model.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                parts.append(table_reference(f"[{name}.{inner}] (decoder)", f.annotation))
    return parts


def table_reference(title: str, model: type[BaseModel]) -> str:
    """One section: its title, its docstring's first paragraph, and a row per key."""
    own = inspect.cleandoc(model.__dict__.get("__doc__") or "")  # its own docstring, not BaseModel's
    intro = " ".join(own.split("\n\n")[0].split())
    rows = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for key, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue  # a nested table: a section of its own
        default = "required" if field.is_required() else f"`{_default(field)}`"
        what = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(field.annotation)}{_bounds(field)} | {default} | {what} |")
    return "\n".join([f"## {title}", "", *([intro, ""] if intro else []), *rows, ""])


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    return json.dumps(value)


def _type(annotation: Any) -> str:
    """A short, readable type: ``int``, ``str or null``, ``"groups" / "stages"``, ``list of int``."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(f'"{m.value}"' for m in annotation)
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " / ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if annotation is type(None):
        return "null"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _bounds(field: Any) -> str:
    """The field's numeric bounds, e.g. `` (≥ 1)``."""
    found = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in _BOUNDS.items() if hasattr(m, name)]
    return f" ({', '.join(found)})" if found else ""
