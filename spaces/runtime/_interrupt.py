"""Ctrl-C in every command: the first SIGINT/SIGTERM stops the process within moments, never inside a store write.

Within :func:`handle_signals` (the ``prunetune`` program installs it around
every command) the first SIGINT or SIGTERM records the signal and, by default,
raises :class:`Interrupted` at once, wherever the main thread is: a command
without safe points (``inspect``, ``profile``, ``export``, ``report``, a
study's preparation) stops within moments and ``main`` exits with 130 (SIGINT)
or 143 (SIGTERM), its output flushed. Two kinds of block change that:

* :func:`protected` -- a critical section (a store transaction, a set of file
  moves that must all happen): a signal inside it is recorded, and
  :class:`Interrupted` is raised when the outermost such block ends normally;
* :func:`safe_points` -- a loop that checks the flag itself (the candidate
  loop of ``run`` and ``worker``, ``finalize``'s loop): a signal inside it is
  only recorded, and the loop calls :func:`check_interrupt` at its safe points
  (between fine-tune and training steps, evaluation batches, rungs and
  candidates), which raises :class:`Interrupted` there, in our own code, so a
  running candidate is released by the command.

An :class:`Interrupted` raised at once may land in code that swallows it (a
``__del__``, a weakref callback, a library's ``except BaseException``); the
flag stays set (Python's report of an exception it ignored, "Exception
ignored in ...", is silenced for :class:`Interrupted` inside the block), and a
watchdog thread raises it again every
:data:`NUDGE_S` seconds while the main thread is still inside
:func:`handle_signals` and outside the two blocks, so it is never lost. A
second signal ends the process at once (``os._exit``, standard streams flushed
first as far as they can be) and leaves a running candidate to the
stale-claim path.

:class:`Interrupted` subclasses ``KeyboardInterrupt`` so that every handler
that releases a candidate on Ctrl-C releases it on SIGTERM too; its
:attr:`~Interrupted.exit_code` is 130 for SIGINT and 143 for SIGTERM.

Both blocks are no-ops off the main thread (a heartbeat or a server thread
opening a store session changes nothing), and outside :func:`handle_signals`
nothing is raised. Torch-free; the flag is per process (Ray trials and worker
processes install their own handlers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = [
    "Interrupted",
    "check_interrupt",
    "handle_signals",
    "interrupt_requested",
    "protected",
    "reinstall_handlers",
    "safe_points",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NUDGE_S = 0.5  # how often a swallowed Interrupted is raised again (while the command still runs)


class Interrupted(KeyboardInterrupt):
    """The user (SIGINT) or a scheduler (SIGTERM) asked the process to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _Flag:
    signum: int | None = None  # the first signal received inside handle_signals
    installed: int = 0  # nesting depth of handle_signals
    deferred: int = 0  # nesting depth of protected() and safe_points() blocks (main thread only)
    raised_at: float | None = None  # when Interrupted was last raised for the recorded signal
    nudging: bool = False  # the watchdog sent the signal: a reminder, not the user's second signal


_flag = _Flag()
_lock = threading.Lock()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_now(signum: int) -> None:
    _flag.raised_at = time.monotonic()
    raise Interrupted(signum)


def _exit_now(signum: int) -> None:
    """The second signal: flush what can be flushed and end the process (the stale-claim path recovers)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream busy in the main thread (reentrant call) or closed
            stream.flush()
    os.write(2, b"prunetune: stopped at once (second signal); the next run takes the candidate over\n")
    os._exit(128 + signum)


def _in_bookkeeping(frame: FrameType | None) -> bool:
    """Whether the main thread is inside this module's own enter/exit code (never raised into)."""
    while frame is not None:
        if frame.f_code in _BOOKKEEPING:
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _flag.nudging:  # the watchdog's reminder of a signal already recorded
        _flag.nudging = False
        if _flag.installed and _flag.deferred == 0 and _flag.signum is not None and not _in_bookkeeping(frame):
            _raise_now(_flag.signum)
        return
    if _flag.signum is not None:
        _exit_now(signum)
    _flag.signum = signum
    _watch()
    if _flag.deferred > 0:
        return  # the block raises it at its end, or its loop at the next safe point
    if _in_bookkeeping(frame):
        _flag.raised_at = time.monotonic()  # entering or leaving a block: the watchdog raises it shortly
        return
    _raise_now(signum)


def _watch() -> None:
    """Start the watchdog that raises a swallowed :class:`Interrupted` again (see the module docs)."""
    main = threading.main_thread().ident

    def nudge() -> None:
        while _flag.installed and _flag.signum is not None:
            time.sleep(NUDGE_S / 5)
            with _lock:  # handle_signals' exit takes it too: no reminder is sent after the block
                last = _flag.raised_at
                due = last is not None and time.monotonic() - last >= NUDGE_S
                if main and _flag.installed and _flag.signum is not None and _flag.deferred == 0 and due:
                    _flag.raised_at = time.monotonic()
                    _flag.nudging = True
                    signal.pthread_kill(main, _flag.signum)  # a real signal: it also wakes a blocking call

    threading.Thread(target=nudge, name="prunetune-interrupt", daemon=True).start()


def interrupt_requested() -> int | None:
    """The signal that asked this process to stop, or ``None``."""
    return _flag.signum


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a stop was requested (call it at a safe point of a loop)."""
    if _flag.signum is not None:
        _raise_now(_flag.signum)


@contextlib.contextmanager
def _deferring(*, raise_at_end: bool) -> Iterator[None]:
    if not _on_main_thread():
        yield
        return
    _flag.deferred += 1
    try:
        yield
    finally:
        _flag.deferred -= 1
    # reached only when the block ended normally: a signal it held back is raised now, once
    if raise_at_end and _flag.deferred == 0 and _flag.signum is not None and _flag.raised_at is None:
        _raise_now(_flag.signum)


def protected() -> contextlib.AbstractContextManager[None]:
    """A critical section (a store write, file moves that belong together): a signal waits for its end.

    When the outermost deferring block ends normally, the signal it held back
    raises :class:`Interrupted` there; if an exception leaves the block, that
    exception goes on (the flag stays set for the next check).
    """
    return _deferring(raise_at_end=True)


def safe_points() -> contextlib.AbstractContextManager[None]:
    """A loop that calls :func:`check_interrupt` at its safe points: inside it, a signal only sets the flag.

    A signal that arrives after the loop's last safe point is raised when the
    block ends, as :func:`protected` does.
    """
    return _deferring(raise_at_end=True)


def _silence_ignored_interrupts() -> tuple[Callable[[sys.UnraisableHookArgs], object], ...]:
    """Keep Python from printing a traceback for an :class:`Interrupted` it had to ignore.

    A signal raised inside a ``__del__``, a weakref callback (importlib's module
    locks have one) or a garbage-collector callback cannot propagate: Python
    reports it through :data:`sys.unraisablehook` ("Exception ignored in ...",
    with a traceback) and goes on. The flag is still set and the watchdog raises
    the signal again moments later, so that report is noise; every other
    unraisable exception still goes to the hook that was installed before.
    Returns the hook installed and the one it replaced, for the block's end.
    """
    before = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, Interrupted):
            return
        before(unraisable)

    sys.unraisablehook = hook
    return hook, before


@contextlib.contextmanager
def handle_signals(*, keep: bool = False) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the command (see the module docs); nests.

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
    if not _on_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    outermost = not _flag.installed
    hooks = None
    if outermost:
        _flag.signum, _flag.raised_at, _flag.deferred = None, None, 0
        hooks = _silence_ignored_interrupts()
    _flag.installed += 1
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        with _lock:  # the watchdog stops reminding once the outermost block is left
            _flag.installed -= 1
        if keep:  # the work is done and the process is exiting: a late signal changes nothing
            for s in _SIGNALS:
                signal.signal(s, signal.SIG_IGN)  # survives finalization, which resets Python handlers to SIG_DFL
        else:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if not _flag.installed:
                _flag.signum, _flag.raised_at = None, None
        if hooks is not None and sys.unraisablehook is hooks[0]:
            sys.unraisablehook = hooks[1]  # ours: put back what was there (a hook set inside the block stays)


def reinstall_handlers() -> None:
    """Take SIGINT and SIGTERM back from a library that replaced the handlers (inside :func:`handle_signals`).

    ``ray.init`` installs its own SIGTERM handler in the driver (it exits with
    code 1 and loses the running candidates); the Ray driver calls this once
    connected. Outside :func:`handle_signals`, or off the main thread, it does nothing.
    """
    if _flag.installed and _on_main_thread():
        for s in _SIGNALS:
            signal.signal(s, _on_signal)


_BOOKKEEPING = {handle_signals.__wrapped__.__code__, _deferring.__wrapped__.__code__}  # type: ignore[attr-defined]
