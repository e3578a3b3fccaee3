"""What runs inside a worker process (a local worker, a SLURM job): process setup, then one run.

`execute(cfg)` is the one entry point that executors send runs to: it runs the composed config
through lorasweep.run.lifecycle, with a pruning reporter when the run is a trial of an Optuna sweep.
Its driver has triaged it already (and said, e.g., that its stored result was unreadable).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from ..console import PlainText, quiet_libraries
from ..errors import RunClaimedError


def execute(cfg: Mapping[str, Any], log_file: str | None = None) -> dict:
    """One run of a sweep, in this process; its console output goes to `log_file` when given.
    A run another process is training now (lorasweep.run.claims) is not started: the return is
    {"claimed_by": who}, for its driver to wait for that run's result (a plain value, not an
    exception: it comes back alike from a local worker and from a SLURM job)."""
    try:
        return _execute(cfg, log_file)
    except RunClaimedError as e:
        return {"claimed_by": e.holder}


def _execute(cfg: Mapping[str, Any], log_file: str | None) -> dict:
    from ..run.lifecycle import run_config

    reporter = None
    if "trial" in cfg:  # a trial of an Optuna sweep: report evaluations to its pruner (lorasweep.run.pruning)
        from ..run.pruning import reporter_for

        reporter = reporter_for(cfg["trial"])
    if log_file is None:
        return run_config(cfg, reporter, triaged=True)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = PlainText(log)  # no terminal colour codes in a log file
        try:
            return run_config(cfg, reporter, triaged=True)
        finally:
            sys.stdout, sys.stderr = saved


def configure_process(threads: int | None) -> None:
    """Set up a process that runs runs: its share of the cores (`threads`; None keeps torch's
    default) and quiet libraries."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
    quiet_libraries()


def die_with_parent() -> None:
    """A worker whose sweep driver is killed (even with SIGKILL) stops too, instead of training on
    unseen while a restarted driver starts the same run again."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the driver's shutdown(cancel=True) still stops them
        pass
