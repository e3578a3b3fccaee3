"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=plan`

Prints one row per run of the sweep (trainable parameters, share of the model and of the budget,
over budget or not, already done or not) and a total line (lorasweep.sweep.plan_table). Nothing is
trained, nothing is written and no weight is read: each run is planned from its config alone.
"""
from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus

from lorasweep.sweep.compose import ContextLauncher, JobConfigs, varying_overrides


class PlanLauncher(ContextLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.sweep.plan_table import format_plan, plan_row

        assert self.config is not None and self.hydra_context is not None
        shared, labels = varying_overrides(job_overrides)
        rows, returns = [], []
        configs = JobConfigs(self.hydra_context.config_loader, self.config)
        for overrides, label in zip(job_overrides, labels):
            node, cfg = configs(overrides)
            row = plan_row(label, cfg)
            rows.append(row)
            returns.append(JobReturn(overrides=list(overrides), cfg=node, task_name="plan",
                                     status=JobStatus.COMPLETED, _return_value=row.trainable))
        if shared:
            print("every run: " + " ".join(shared))
        print(format_plan(rows), flush=True)
        return returns
