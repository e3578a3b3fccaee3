"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=slurm`

The same sweep as the local launcher (every run planned first: invalid, already done and over-budget
runs are reported and not launched), but the rest go to SLURM as job arrays through submitit, with
the settings of conf/hydra/launcher/slurm.yaml. The driver may die: the jobs go on, and the same
command started again collects them (lorasweep.slurm_executor).
"""
from __future__ import annotations

import signal
from typing import Any, Sequence

from hydra.core.utils import JobReturn

from lorasweep.sweep_jobs import ContextLauncher


class SlurmLauncher(ContextLauncher):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        from lorasweep.slurm_executor import SlurmSettings

        self.settings = SlurmSettings.from_config(settings)  # an unknown key fails here, by name

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.local_sweep import run_sweep
        from lorasweep.slurm_executor import SlurmExecutor

        assert self.config is not None and self.hydra_context is not None
        # SIGTERM / SIGHUP (kill, a closed terminal) end the driver like Ctrl-C; the jobs go on
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
        return run_sweep(self.hydra_context.config_loader, self.config, job_overrides,
                         make_executor=lambda: SlurmExecutor(self.settings))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
