"""The stop flag in one process: safe points, protected sections and the watchdog (``spaces.runtime._interrupt``).

The CLI-level behaviour (exit codes, instants of a real run, every command) is tested in
``tests/search/test_interrupts.py``.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from spaces.runtime._interrupt import NUDGE_S


def test_inside_safe_points_the_signal_only_sets_the_flag_until_the_loop_checks_it() -> None:
    import os

    from spaces import Interrupted, check_interrupt, handle_signals, interrupt_requested, safe_points

    with handle_signals(), safe_points():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes: inside a loop with safe points it only records
        assert interrupt_requested() == signal.SIGTERM
        with pytest.raises(Interrupted) as info:
            check_interrupt()
        assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)
    assert interrupt_requested() is None  # cleared: the next command starts afresh
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_elsewhere_the_signal_raises_at_once_but_waits_for_a_protected_section() -> None:
    import os

    from spaces import Interrupted, handle_signals, protected

    with handle_signals():
        sent = time.monotonic()
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # a long call without safe points: interrupted at once
        assert time.monotonic() - sent < 1.0
    done: list[str] = []
    with handle_signals(), pytest.raises(Interrupted) as info:
        with protected():  # a store write: it ends first, and the signal is raised where it ends
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            done.append("section")
        done.append("after the section")
    assert done == ["section"] and info.value.exit_code == 143


def test_an_interrupt_swallowed_by_a_library_is_raised_again() -> None:
    import os

    from spaces import Interrupted, handle_signals

    swallowed = 0
    sent = time.monotonic()
    with handle_signals(), pytest.raises(Interrupted):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        except KeyboardInterrupt:  # what a __del__, a weakref callback or a library's cleanup may do
            swallowed += 1
        time.sleep(30)  # the command goes on: the watchdog raises the interrupt again
    assert swallowed == 1 and NUDGE_S <= time.monotonic() - sent < NUDGE_S + 1.5


def test_an_interrupt_python_had_to_ignore_prints_no_traceback_and_is_raised_again() -> None:
    """A signal landing in a ``__del__`` (or importlib's weakref callback) is ignored by Python, silently."""
    import gc
    import sys

    from spaces import Interrupted, handle_signals

    reported: list[type[BaseException] | None] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: reported.append(unraisable.exc_type)

    class Dropped:
        def __del__(self) -> None:
            # Sent to the main thread itself and waited for in a loop, whose every
            # turn runs pending handlers: the handler runs inside this __del__, and
            # its Interrupted cannot leave it. (A signal taken by another thread
            # would run the handler at the next Python call instead, in Failing's
            # __del__, and the ValueError would never be raised.)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)

    class Failing:
        def __del__(self) -> None:
            raise ValueError("an ordinary error in __del__")

    # No collection between the two: in a large process (the whole suite) one takes longer than the watchdog's
    # NUDGE_S, its reminder then lands in Failing's __del__ and takes the ValueError's place.
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        sent = time.monotonic()
        with handle_signals(), pytest.raises(Interrupted):
            Dropped()  # no name holds it: __del__ runs at once
            Failing()
            time.sleep(30)  # the watchdog raises the interrupt again
        assert NUDGE_S <= time.monotonic() - sent < NUDGE_S + 1.5
        assert reported == [ValueError]  # Python's report of the Interrupted was silenced, nothing else
    finally:
        if collecting:
            gc.enable()
        restored = sys.unraisablehook
        sys.unraisablehook = before
    assert restored.__name__ == "<lambda>"  # handle_signals put back the hook it found
