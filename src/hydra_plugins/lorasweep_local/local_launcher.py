"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra.launcher.n_jobs=2`

Hydra's side of a local grid sweep: lorasweep.sweep.grid triages every run first (no weights:
already done? over budget? a bad config?), then trains the rest in worker processes, `n_jobs` at a
time (lorasweep.executors.local), and a failed run again up to `retries` times. Results live in the
results store keyed by run key, so running the same sweep again, or after an interruption, trains
only what is missing.
"""
from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn

from lorasweep.sweep.compose import ContextLauncher


class LocalLauncher(ContextLauncher):
    def __init__(self, n_jobs: int = 1, threads: int | None = None, retries: int = 0) -> None:
        super().__init__()
        self.n_jobs, self.threads, self.retries = n_jobs, threads, retries  # retries: checked by the sweep

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.executors.local import LocalExecutor
        from lorasweep.sweep.grid import sweep_grid

        assert self.config is not None and self.hydra_context is not None
        return sweep_grid(self.hydra_context.config_loader, self.config, job_overrides,
                          open_executor=lambda: LocalExecutor(self.n_jobs, self.threads), retries=self.retries)
