"""A sweep driver's interrupts and its end. Interrupts: Ctrl-C, and the signals that mean the same to a user (kill's SIGTERM,
a closed terminal's SIGHUP), all raised as KeyboardInterrupt where the driver waits. Each driver
catches it, stops its workers (lorasweep.executors: they end their runs cleanly, release their
claims and write no result), says what was kept, and exits 130 (a SweepExit, which `exit_status` turns into the process's exit
status at the entry point: the Hydra plugins)."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from ..console import say
from ..errors import SweepExit

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_signals() -> None:
    """From now on, SIGTERM and SIGHUP raise KeyboardInterrupt in this process's main thread, as Ctrl-C does."""
    for signum in SIGNALS:
        signal.signal(signum, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def exit_status() -> Iterator[None]:
    """An entry point's end of a sweep: a SweepExit raised by the library becomes the process's exit
    status (said already, as a rule: no traceback after it)."""
    try:
        yield
    except SweepExit as e:
        if not e.said:
            say(str(e))
        raise SystemExit(e.code) from None
