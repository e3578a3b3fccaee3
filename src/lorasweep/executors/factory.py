"""The executor a sweep's `hydra.launcher` config asks for: SLURM jobs or local worker processes;
and the launcher settings every driver reads the same way (`retries`; local workers' GPUs).

The grid's launcher plugins build theirs directly; the Optuna sweeper, which runs its own loop
under whatever launcher is configured, asks here.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError
from .gpus import check_gpus_per_run, whole_number

SLURM_LAUNCHER = "hydra_plugins.lorasweep_slurm.slurm_launcher.SlurmLauncher"
PLAN_LAUNCHER = "hydra_plugins.lorasweep_plan.plan_launcher.PlanLauncher"


def executor_for(launcher: Mapping[str, Any] | None, n_jobs: int = 1, threads: int | None = None,
                 gpus: list[str] | None = None):
    """SLURM jobs for hydra/launcher=slurm, else local worker processes. `n_jobs`: runs in flight
    at once (for SLURM: that the driver keeps queued); `gpus`: each local worker's
    CUDA_VISIBLE_DEVICES (local_placement)."""
    launcher = dict(launcher or {})
    if runs_on_slurm(launcher):
        from .slurm import SlurmExecutor, SlurmSettings

        return SlurmExecutor(SlurmSettings.from_config(launcher), n_jobs)
    from .local import LocalExecutor

    return LocalExecutor(n_jobs, threads, gpus)


def local_placement(launcher: Mapping[str, Any] | None, n_jobs: Any,
                    n_jobs_field: str = "hydra.launcher.n_jobs") -> tuple[int, list[str] | None]:
    """(workers, each one's CUDA_VISIBLE_DEVICES or None) for local workers under this hydra.launcher
    config (runs_per_gpu, gpus_per_run: executors/gpus); (n_jobs, None) for SLURM jobs, whose GPU
    ask is checked the same way (executors/slurm_gpus). Raises ConfigError for an invalid value:
    call it before anything trains. The Optuna sweeper's trials train on one GPU each: data-parallel
    trials (gpus_per_run > 1) would each need their pruner's decisions shared between ranks: not built."""
    launcher = dict(launcher or {})
    # the sweeper plans a study itself under hydra/launcher=plan (sweep/optuna_plan); a study driven with
    # that launcher anyway would read it as local workers, and train
    if launcher.get("_target_") == PLAN_LAUNCHER:
        raise ConfigError("hydra/launcher=plan lists a grid's runs before any trains; an Optuna study "
                          "(hydra/sweeper=optuna) picks each trial from the results of those before it, so "
                          "there is no plan to list: run the study without hydra/launcher=plan, or list a grid "
                          "of the same values (-m lora.r=4,8,16 ... hydra/launcher=plan)")
    gpus_per_run = launcher.get("gpus_per_run", 1)
    if gpus_per_run != 1 and check_gpus_per_run(gpus_per_run) > 1:
        raise ConfigError(f"hydra.launcher.gpus_per_run={gpus_per_run} is not supported by the Optuna sweeper "
                          f"(hydra/sweeper=optuna): its trials train on one GPU each; use 1 (default), or a grid "
                          f"sweep (the default sweeper) to train each run data-parallel")
    if runs_on_slurm(launcher):
        from .slurm import SlurmSettings

        SlurmSettings.from_config(launcher)
        return n_jobs, None
    from .gpus import place_workers

    return place_workers(n_jobs, launcher.get("runs_per_gpu", 1), launcher.get("gpus_per_run", 1),
                         n_jobs_field=n_jobs_field)


def runs_on_slurm(launcher: Mapping[str, Any] | None) -> bool:
    """Whether this hydra.launcher config runs its runs as SLURM jobs (hydra/launcher=slurm, slurm_local)."""
    return dict(launcher or {}).get("_target_") == SLURM_LAUNCHER


def check_retries(value: Any) -> int:
    """hydra.launcher.retries: how many more times a failed run is run within the same sweep."""
    return whole_number("hydra.launcher.retries", value,
                        "how many more times a failed run is run again within the same sweep", minimum=0, default="0")
