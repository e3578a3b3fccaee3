"""The executor a sweep's `hydra.launcher` config asks for: SLURM jobs or local worker processes.

The grid's launcher plugins build theirs directly; the Optuna sweeper, which runs its own loop
under whatever launcher is configured, asks here.
"""
from __future__ import annotations

from typing import Any, Mapping

SLURM_LAUNCHER = "hydra_plugins.lorasweep_slurm.slurm_launcher.SlurmLauncher"


def executor_for(launcher: Mapping[str, Any] | None, n_jobs: int = 1, threads: int | None = None):
    """SLURM jobs for hydra/launcher=slurm, else local worker processes. `n_jobs`: runs in flight
    at once (for SLURM: that the driver keeps queued)."""
    launcher = dict(launcher or {})
    if runs_on_slurm(launcher):
        from .slurm import SlurmExecutor, SlurmSettings

        return SlurmExecutor(SlurmSettings.from_config(launcher), n_jobs)
    from .local import LocalExecutor

    return LocalExecutor(n_jobs, threads)


def runs_on_slurm(launcher: Mapping[str, Any] | None) -> bool:
    """Whether this hydra.launcher config runs its runs as SLURM jobs (hydra/launcher=slurm, slurm_local)."""
    return dict(launcher or {}).get("_target_") == SLURM_LAUNCHER
