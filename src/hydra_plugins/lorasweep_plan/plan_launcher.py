"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=plan`

Prints one row per run of the sweep (trainable parameters, share of the model and of the budget,
over budget or not, and where it stands: done 0.623, running ... ETA, queued on SLURM, failed,
interrupted, not started; lorasweep.sweep.status) and a total line counting each state
(lorasweep.sweep.plan_table). Nothing is trained, nothing is written and no weight is read: each run
is planned from its config alone, its folder's small files looked at, and SLURM's queue asked once
for all runs submitted there. With hydra.launcher.pack (and n_jobs) it shows the packs that the
local launcher would train the runs still to run in (lorasweep.sweep.packs; pack=auto: each group's choice
and why, lorasweep.sweep.pack_auto). A results_dir that looks not writable (looked at, not probed: that
would write) is said in the total line. Each run still to run has its predicted train time, whole-run
time and peak memory on this machine (lorasweep.run.predict; calibrated on the store's finished runs,
or cold, as a line under the table says), and the total line the sweep's wall time at n_jobs.
"""
from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus

from lorasweep.sweep.compose import ContextLauncher, JobConfigs


class PlanLauncher(ContextLauncher):
    def __init__(self, pack: Any = False, n_jobs: int | None = None, gpus_per_run: Any = 1, runs_per_gpu: Any = 1) -> None:
        super().__init__()
        self.pack, self.n_jobs = pack, n_jobs  # the packs the local launcher would make (sweep/packs)
        # as for the local and SLURM launchers: a run that cannot train on gpus_per_run GPUs is an
        # invalid row; runs_per_gpu places runs only (taken so that a command switches to the plan as it is)
        self.gpus_per_run, self.runs_per_gpu = gpus_per_run, runs_per_gpu

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.errors import ConfigError
        from lorasweep.executors.gpus import check_gpus_per_run, check_runs_per_gpu
        from lorasweep.sweep.packs import check_pack_gpus, pack_size
        from lorasweep.sweep.plan_table import plan_runs
        from lorasweep.sweep.predicted import local_where

        assert self.config is not None and self.hydra_context is not None
        try:
            pack = pack_size(self.pack)
            gpus_per_run = check_gpus_per_run(self.gpus_per_run)
            check_runs_per_gpu(self.runs_per_gpu)
            check_pack_gpus(pack, gpus_per_run)
        except ConfigError as e:
            print(f"plan: {e}")
            raise SystemExit(2) from None
        where = local_where(self.n_jobs or 1)  # the local launcher's runs, for their predicted cost
        configs = JobConfigs(self.hydra_context.config_loader, self.config)
        rows, nodes, text = plan_runs(job_overrides, configs, where, gpus_per_run, pack)
        print(text, flush=True)
        return [JobReturn(overrides=list(overrides), cfg=node, task_name="plan", status=JobStatus.COMPLETED,
                          _return_value=row.trainable) for overrides, node, row in zip(job_overrides, nodes, rows)]
