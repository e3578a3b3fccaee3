"""A sweep driver's interrupts: Ctrl-C, and the signals that mean the same to a user (kill's SIGTERM,
a closed terminal's SIGHUP), all raised as KeyboardInterrupt where the driver waits. Each driver
catches it, stops its workers (lorasweep.executors: they end their runs cleanly, release their
claims and write no result), says what was kept, and exits 130."""
from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_signals() -> None:
    """From now on, SIGTERM and SIGHUP raise KeyboardInterrupt in this process's main thread, as Ctrl-C does."""
    for signum in SIGNALS:
        signal.signal(signum, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
