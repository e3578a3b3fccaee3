"""Runs executed in worker processes on this machine, N at a time.

Workers are started once and kept across runs (torch, transformers and a model's first load are paid
once per worker, not once per run), each with its share of the cores so that parallel runs do not
oversubscribe them. A run's console output goes to its log file when several run at once.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from .worker import configure_process, die_with_parent, execute


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
        return self._pool.submit(execute, dict(cfg), str(log_file) if log_file else None)

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
        if cancel:  # the pool's workers are this process's only multiprocessing children
            for process in multiprocessing.active_children():
                process.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.shutdown(cancel=exc_type is not None)


def _init_worker(threads: int) -> None:
    die_with_parent()
    configure_process(threads)
