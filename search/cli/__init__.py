"""The ``prunetune`` command line (light: each command imports what it needs when it runs)."""

from __future__ import annotations

from search.cli._main import main

__all__ = ["main"]
