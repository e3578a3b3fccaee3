"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=slurm`

Hydra's side of a grid sweep on SLURM: the same sweep as the local launcher (lorasweep.sweep.grid:
invalid, already done and over-budget runs are reported and never submitted), but the rest go to
SLURM as job arrays through submitit (lorasweep.executors.slurm), with the settings of
conf/hydra/launcher/slurm.yaml (each job asks for the GPUs its run uses: executors/slurm_gpus). The driver may die: the jobs go on, and the same command started
again collects them.
"""
from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn

from lorasweep.console import say
from lorasweep.errors import ConfigError
from lorasweep.sweep.compose import ContextLauncher


class SlurmLauncher(ContextLauncher):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.raw = settings  # checked in launch(), where a mistake can be said in one line

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.executors.slurm import SlurmExecutor, SlurmSettings
        from lorasweep.sweep.grid import sweep_grid
        from lorasweep.sweep.interrupts import exit_status
        from lorasweep.sweep.predicted import slurm_where

        assert self.config is not None and self.hydra_context is not None
        try:  # an unknown key, a GPU ask the run would not use: before anything is planned or submitted
            settings = SlurmSettings.from_config(self.raw)
        except ConfigError as e:
            say(f"sweep: {e}; nothing was submitted")
            raise SystemExit(2) from None
        with exit_status():  # the sweep's SweepExit: this process's exit status
            return sweep_grid(self.hydra_context.config_loader, self.config, job_overrides,
                              open_executor=lambda: SlurmExecutor(settings), retries=settings.retries,
                              pack=settings.pack, gpus_per_run=int(settings.gpus_per_run),  # checked above
                              where=slurm_where(settings))
