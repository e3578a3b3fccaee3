"""What one run can be refused for before torch, transformers, peft or a data file is loaded: its
config's own values (config/checks.py), its tracker, train.compile, and a results store that cannot
be written. `python launch.py` checks these first, so such a mistake is said in under a second
rather than after the libraries' 5 s of imports; run_config checks them first too (run/lifecycle.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..config.checks import checked_spec
from . import store
from .compile_check import check_compile
from .tracking import check_tracking


def preflight(cfg: Mapping[str, Any], in_sweep: bool = False) -> Path:
    """Check `cfg` as far as its values go (ConfigError, UnwritableStoreError); returns the results
    store. `in_sweep`: a sweep's worker, whose driver found the store writable: a refusal now is the
    store's fault (StoreError)."""
    check_tracking(cfg.get("tracking") or {})
    checked_spec(cfg)
    check_compile((cfg.get("train") or {}).get("compile", False))  # without a compiler too
    results_dir = store.store_dir(cfg)
    (store.check_still_writable if in_sweep else store.check_writable)(results_dir)  # created if missing
    return results_dir
