"""What lorasweep prints: its own progress lines on stderr, and quiet libraries around them.

A leaf module: it imports nothing from lorasweep.
"""
from __future__ import annotations

import os
import sys
import warnings


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
