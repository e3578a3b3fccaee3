"""The executor a sweep's `hydra.launcher` config asks for: SLURM jobs or local worker processes;
and the launcher setting every driver reads the same way (`retries`).

The grid's launcher plugins build theirs directly; the Optuna sweeper, which runs its own loop
under whatever launcher is configured, asks here.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError

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


def check_retries(value: Any) -> int:
    """hydra.launcher.retries: how many more times a failed run is run within the same sweep."""
    if isinstance(value, float) and value.is_integer():  # retries=2.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"hydra.launcher.retries={value!r} is invalid: it is how many more times a failed run is "
                          f"run again within the same sweep, a whole number 0 or more (default 0)")
    return value
