"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra.launcher.n_jobs=2`

Plans every run first (no weights: already done? over budget? a bad config?), then trains the rest
in worker processes, `n_jobs` at a time, printing "run i/N" as each starts and ends and a summary at
the end. Results live in the results store keyed by run key, so running the same sweep again, or
after an interruption, trains only what is missing.
"""
from __future__ import annotations

import signal
from typing import Sequence

from hydra.core.utils import JobReturn

from lorasweep.sweep_jobs import ContextLauncher


class LocalLauncher(ContextLauncher):
    def __init__(self, n_jobs: int = 1, threads: int | None = None) -> None:
        super().__init__()
        self.n_jobs, self.threads = n_jobs, threads

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.local_sweep import run_sweep

        assert self.config is not None and self.hydra_context is not None
        # SIGTERM / SIGHUP (kill, a closed terminal) end the sweep like Ctrl-C: running runs stop, finished stay
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
        return run_sweep(self.hydra_context.config_loader, self.config, job_overrides,
                         n_jobs=self.n_jobs, threads=self.threads)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
