"""Interrupts that are never lost: a stop flag set by SIGINT/SIGTERM and checked at safe points.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main
thread happens to be. Raised inside a weakref callback, a ``__del__`` or a
library's ``except BaseException`` cleanup, it is printed and ignored or
swallowed, so one Ctrl-C in many would be silently lost. Instead, the commands
that run long loops (``prunetune run``, ``finalize``, ``worker``) install
:func:`handle_signals`: the first SIGINT or SIGTERM only records the signal,
and the loops call :func:`check_interrupt` at safe points (between fine-tune
and training steps, between evaluation batches, between rungs and between
candidates), which raises :class:`Interrupted` there, in our own code. A second
signal ends the process at once (``os._exit``) and leaves the running
candidate to the stale-claim path.

:class:`Interrupted` subclasses ``KeyboardInterrupt`` so that every handler
that releases a candidate on Ctrl-C releases it on SIGTERM too; its
:attr:`~Interrupted.exit_code` is 130 for SIGINT and 143 for SIGTERM.

Torch-free; the flag is per process (Ray trials and worker processes install
their own handlers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "check_interrupt", "handle_signals", "interrupt_requested", "reinstall_handlers"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The user (SIGINT) or a scheduler (SIGTERM) asked the process to stop; raised at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _Flag:
    signum: int | None = None
    installed: int = 0


_flag = _Flag()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _flag.signum is not None:  # the second signal: stop now, the stale-claim path recovers the candidate
        os.write(2, b"prunetune: stopped at once (second signal); the next run takes the candidate over\n")
        os._exit(128 + signum)
    _flag.signum = signum


def interrupt_requested() -> int | None:
    """The signal that asked this process to stop, or ``None``."""
    return _flag.signum


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a stop was requested (call it at a safe point of a loop)."""
    if _flag.signum is not None:
        raise Interrupted(_flag.signum)


@contextlib.contextmanager
def handle_signals(*, keep: bool = False) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set the stop flag (see the module docs); nests.

    Outside the main thread (where Python cannot install handlers) the block
    runs with the handlers as they are. On exit the previous handlers come
    back and the flag is cleared, so that a process running several commands
    (a test, the service's worker) starts each one afresh. With ``keep`` (the
    ``prunetune`` program itself) the block's end is the command's: both
    signals are then ignored while the process exits. (Python's finalization
    resets a Python-level handler to the default action, so a Ctrl-C during a
    slow shutdown would otherwise kill the process by signal, after its work
    and its exit code were already settled; an ignored signal stays ignored.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    if not _flag.installed:
        _flag.signum = None
    _flag.installed += 1
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        if keep:  # the work is done and the process is exiting: a late signal changes nothing
            for s in _SIGNALS:
                signal.signal(s, signal.SIG_IGN)  # survives finalization, which resets Python handlers to SIG_DFL
        else:
            _flag.installed -= 1
            for s, handler in previous.items():
                signal.signal(s, handler)
            if not _flag.installed:
                _flag.signum = None


def reinstall_handlers() -> None:
    """Take SIGINT and SIGTERM back from a library that replaced the handlers (inside :func:`handle_signals`).

    ``ray.init`` installs its own SIGTERM handler in the driver (it exits with
    code 1 and loses the running candidates); the Ray driver calls this once
    connected. Outside :func:`handle_signals`, or off the main thread, it does nothing.
    """
    if _flag.installed and threading.current_thread() is threading.main_thread():
        for s in _SIGNALS:
            signal.signal(s, _on_signal)
