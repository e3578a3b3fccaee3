"""What launch.py calls: run one composed config, and turn a user's mistake into one clear line."""
from __future__ import annotations

import sys
from typing import Any, Mapping

from .assets import ModelUnavailableError
from .data import DataError
from .spec import ConfigError

USER_ERRORS = (ConfigError, DataError, ModelUnavailableError)


def run_or_explain(cfg: Mapping[str, Any]) -> float | None:
    """Run the config and return the objective (for sweepers); exit 2 with a message on bad input."""
    quiet_libraries()
    from .run import run_from_config

    try:
        result = run_from_config(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return (result.get("objective") or {}).get("value")


def quiet_libraries() -> None:
    """Keep the console to lorasweep's own progress lines: no per-file progress bars from datasets
    and transformers, no deprecation notices about their internals."""
    import os
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported (SFT only)
    if "datasets" in sys.modules:  # already imported: the variable came too late for it
        sys.modules["datasets"].disable_progress_bars()
    hf_logging.disable_progress_bar()
