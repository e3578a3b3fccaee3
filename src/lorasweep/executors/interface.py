"""What a sweep's driver (sweep/driver.py) needs of an executor: local worker processes
(executors/local.py) and SLURM jobs (executors/slurm.py) both are one, and a new launcher's
executor is another (docs/ARCHITECTURE.md, "Where to add")."""
from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

# What an executor is sent: a run's config (or a pack's task: worker.pack_task) and the folder its
# log and job record go to (a pack's: its first run's).
Task = tuple[Mapping[str, Any], Path]


class Executor(Protocol):
    n_jobs: int       # tasks in flight at once (for SLURM: that the driver keeps queued)
    verb: str         # what the driver's line says of a task sent: "started", "submitted"
    pack_spread: int  # pack=true: the packs each group of compatible runs is split into

    def submit_many(self, items: Sequence[Task]) -> list[Future]:
        """Futures of the tasks' results (a run's result dict, or a pack's {"pack": [...]}); a
        future may carry a `note` for the driver's line (its log, its SLURM job)."""

    def follows(self, folder: Path) -> bool:
        """Whether the run in `folder`, claimed by another process, is a job of this executor's
        still running (a restarted SLURM driver's): submit_many re-attaches to it."""

    def in_flight(self) -> list[str]:
        """The jobs that go on without this driver (SLURM's, after an interrupt); [] for local workers."""

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the tasks in flight, or (cancel) stop them now."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: Any) -> None: ...
