"""What a sweep's driver (sweep/driver.py) needs of an executor: local worker processes
(executors/local.py) and SLURM jobs (executors/slurm.py) both are one, and a new launcher's
executor is another (docs/ARCHITECTURE.md, "Where to add")."""
from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, Sequence

from .job import Job


class Executor(Protocol):
    n_jobs: int       # jobs in flight at once (for SLURM: that the driver keeps queued)
    verb: str         # what the driver's line says of a job sent: "started", "submitted"
    pack_spread: int  # pack=true: the packs each group of compatible runs is split into

    def submit_many(self, jobs: Sequence[Job]) -> list[Future]:
        """Futures of the jobs' results (a run's result dict, or a pack's {"pack": [...]}); a
        future may carry a `note` for the driver's line (its log, its SLURM job)."""

    def follows(self, folder: Path) -> bool:
        """Whether the run in `folder`, claimed by another process, is a job of this executor's
        still running (a restarted SLURM driver's): submit_many re-attaches to it."""

    def in_flight(self) -> list[str]:
        """The jobs that go on without this driver (SLURM's, after an interrupt); [] for local workers."""

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the jobs in flight, or (cancel) stop them now."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: Any) -> None: ...
