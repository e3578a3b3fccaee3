"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra.launcher.n_jobs=2`

Hydra's side of a local grid sweep: lorasweep.sweep.grid triages every run first (no weights:
already done? over budget? a bad config?), then trains the rest in worker processes, `n_jobs` at a
time (lorasweep.executors.local; on a GPU machine each worker on its own GPU, or `runs_per_gpu` to a
GPU: lorasweep.executors.gpus; or `gpus_per_run` GPUs to a run, trained data-parallel:
lorasweep.executors.data_parallel), and a failed run again up to `retries` times. Results live in the
results store keyed by run key, so running the same sweep again, or after an interruption, trains
only what is missing.
"""
from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn

from lorasweep.console import say
from lorasweep.errors import ConfigError
from lorasweep.sweep.compose import ContextLauncher


class LocalLauncher(ContextLauncher):
    def __init__(self, n_jobs: int | None = None, threads: int | None = None, retries: int = 0,
                 runs_per_gpu: int = 1, gpus_per_run: int = 1, pack: Any = False) -> None:
        super().__init__()
        self.n_jobs, self.threads, self.retries = n_jobs, threads, retries  # retries: checked by the sweep
        self.runs_per_gpu, self.gpus_per_run = runs_per_gpu, gpus_per_run
        self.pack = pack  # checked by the sweep (lorasweep.sweep.packs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.executors.gpus import place_workers
        from lorasweep.executors.local import LocalExecutor
        from lorasweep.sweep.grid import sweep_grid
        from lorasweep.sweep.interrupts import exit_status
        from lorasweep.sweep.predicted import local_where

        assert self.config is not None and self.hydra_context is not None
        try:  # before anything is planned or trained
            n_jobs, gpus = place_workers(self.n_jobs, self.runs_per_gpu, self.gpus_per_run)
        except ConfigError as e:
            say(f"sweep: {e}; nothing was trained")
            raise SystemExit(2) from None
        with exit_status():  # the sweep's SweepExit: this process's exit status
            return sweep_grid(self.hydra_context.config_loader, self.config, job_overrides,
                              open_executor=lambda: LocalExecutor(n_jobs, self.threads, gpus), retries=self.retries,
                              pack=self.pack, gpus_per_run=int(self.gpus_per_run),  # checked and placed above
                              where=local_where(n_jobs, self.threads))
