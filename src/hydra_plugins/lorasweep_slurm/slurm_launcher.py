"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=slurm`

Hydra's side of a grid sweep on SLURM: the same sweep as the local launcher (lorasweep.sweep.grid:
invalid, already done and over-budget runs are reported and never submitted), but the rest go to
SLURM as job arrays through submitit (lorasweep.executors.slurm), with the settings of
conf/hydra/launcher/slurm.yaml. The driver may die: the jobs go on, and the same command started
again collects them.
"""
from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn

from lorasweep.sweep.compose import ContextLauncher


class SlurmLauncher(ContextLauncher):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        from lorasweep.executors.slurm import SlurmSettings

        self.settings = SlurmSettings.from_config(settings)  # an unknown key fails here, by name

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.executors.slurm import SlurmExecutor
        from lorasweep.sweep.grid import sweep_grid

        assert self.config is not None and self.hydra_context is not None
        return sweep_grid(self.hydra_context.config_loader, self.config, job_overrides,
                          open_executor=lambda: SlurmExecutor(self.settings), retries=self.settings.retries)
