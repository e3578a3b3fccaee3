"""What lorasweep prints: its own progress lines on stderr, and quiet libraries around them.

A leaf module: it imports nothing from lorasweep.
"""
from __future__ import annotations

import io
import os
import re
import sys
import warnings

# A terminal's control sequences (colours, bold, cursor moves): ESC [ parameters final-letter.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def say(line: str) -> None:
    """One progress line on stderr, flushed at once (a sweep's log is read while it runs)."""
    print(line, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Keep the console to lorasweep's own progress lines: no per-file progress bars from datasets
    and transformers, no deprecation notices about their internals."""
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported (SFT only)
    if "datasets" in sys.modules:  # already imported: the variable came too late for it
        sys.modules["datasets"].disable_progress_bars()
    hf_logging.disable_progress_bar()


class PlainText(io.TextIOBase):
    """A text stream onto `stream` without terminal control sequences: what goes to a log file
    (a run's log.txt) reads as text, whatever colours a library prints for a terminal."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_ESCAPES.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # libraries that colour only a terminal do not colour this

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return self.stream.encoding


def duration(seconds: float) -> str:
    """45s, 3m20s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
