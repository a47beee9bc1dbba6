"""The exception root of PruneTune and its subclasses (torch-free: every package imports it).

Every package raises these (or ``ValueError``/``TypeError`` for plain bad
arguments); the CLI turns any of them into a one-line message and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "InfeasibleBudgetError",
    "InputTypeError",
    "PlanError",
    "PruneTuneError",
    "UnsupportedModelError",
    "UsageError",
    "first_line",
]


class PruneTuneError(Exception):
    """Base class of all PruneTune errors."""


class PlanError(PruneTuneError, ValueError):
    """A plan that does not fit its model space (unknown id, ratio out of range, ...)."""


class UnsupportedModelError(PruneTuneError):
    """The model contains a layer or op the space cannot handle correctly."""


class UsageError(PruneTuneError, ValueError):
    """A bad command-line value or a missing file the user named (exit code 2)."""


class InputTypeError(PruneTuneError, TypeError):
    """A value of the wrong type given by the user (a config value, a plan field, a budget)."""


class InfeasibleBudgetError(PruneTuneError, ValueError):
    """No plan of the space meets the budget; the message names the smallest cost."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message (for one-line errors); ``default`` or the type name if empty."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default
