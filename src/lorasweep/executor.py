"""Runs executed in worker processes on this machine, N at a time.

Workers are started once and kept across runs (torch, transformers and a model's first load are paid
once per worker, not once per run), each with its share of the cores so that parallel runs do not
oversubscribe them. A run's console output goes to its log file when several run at once.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

class SubmissionError(RuntimeError):
    """The cluster refused the runs (sbatch's error, e.g. 'Invalid partition name specified')."""


SLURM_LAUNCHER = "hydra_plugins.lorasweep_slurm.slurm_launcher.SlurmLauncher"


def make_executor(launcher: Mapping[str, Any] | None, n_jobs: int = 1, threads: int | None = None):
    """The executor for a sweep's hydra.launcher config: SLURM jobs for hydra/launcher=slurm, else
    local worker processes. `n_jobs`: runs in flight at once (for SLURM: that the driver keeps queued)."""
    launcher = dict(launcher or {})
    if launcher.get("_target_") == SLURM_LAUNCHER:
        from .slurm_executor import SlurmExecutor, SlurmSettings

        return SlurmExecutor(SlurmSettings.from_config(launcher), n_jobs)
    return LocalExecutor(n_jobs, threads)


def threads_per_run(n_jobs: int, threads: int | None = None) -> int:
    """Explicit `threads`, else the cores split evenly between the runs in flight (at least 1)."""
    return threads if threads and threads > 0 else max(1, (os.cpu_count() or 1) // max(1, n_jobs))


class LocalExecutor:
    """submit(cfg) -> Future of the run's result dict; `n_jobs` runs in flight at once."""

    verb = "started"

    def __init__(self, n_jobs: int = 1, threads: int | None = None):
        self.n_jobs = max(1, n_jobs)
        self.threads = threads_per_run(self.n_jobs, threads)
        # spawn, not fork: a forked child inherits torch's thread pools and locks mid-state
        self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(self.threads,))

    def submit(self, cfg: Mapping[str, Any], log_file: Path | None = None) -> Future:
        return self._pool.submit(_run, dict(cfg), str(log_file) if log_file else None)

    def submit_many(self, items: Sequence[tuple[Mapping[str, Any], Path]]) -> list[Future]:
        """(cfg, run folder) pairs; with several runs at once each one's output goes to its log.txt."""
        futures = []
        for cfg, folder in items:
            log = folder / "log.txt" if self.n_jobs > 1 else None
            future = self.submit(cfg, log)
            future.note = f"log: {log}" if log else ""  # type: ignore[attr-defined]
            futures.append(future)
        return futures

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the runs in flight, or (cancel) drop queued runs and stop the running ones now:
        an interrupted run leaves no result and runs again next time."""
        if cancel:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.shutdown(cancel=exc_type is not None)


def _init_worker(threads: int) -> None:
    _die_with_parent()
    configure_process(threads)


def configure_process(threads: int | None) -> None:
    """Set up a process that runs runs (a local worker, a SLURM job): its share of the cores
    (`threads`; None keeps torch's default) and quiet libraries."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
    from .cli import quiet_libraries

    quiet_libraries()


def _die_with_parent() -> None:
    """A worker whose sweep driver is killed (even with SIGKILL) stops too, instead of training on
    unseen while a restarted driver starts the same run again."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the driver's shutdown(cancel=True) still stops them
        pass


def run_config(cfg: Mapping[str, Any]) -> dict:
    """One run of a sweep, in whatever process runs it (a local worker, a SLURM job)."""
    from .run import run_from_config

    reporter = None
    if "trial" in cfg:  # a trial of an Optuna sweep: report evaluations to its pruner (lorasweep.pruning)
        from .pruning import reporter_for

        reporter = reporter_for(cfg["trial"])
    return run_from_config(cfg, reporter)


def _run(cfg: dict, log_file: str | None) -> dict:
    if log_file is None:
        return run_config(cfg)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            return run_config(cfg)
        finally:
            sys.stdout, sys.stderr = saved
