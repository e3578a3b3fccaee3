"""`python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo hydra/launcher=plan`

Prints one row per run of the sweep (trainable parameters, share of the model and of the budget,
over budget or not, already done or not) and a total line. Nothing is trained and no weight is
read: each run is planned from its config alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class PlanLauncher(Launcher):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lorasweep.plan_table import PlanRow, format_plan, plan_row

        assert self.config is not None and self.hydra_context is not None
        rows: list[PlanRow] = []
        returns = []
        shared = set.intersection(*(set(filter_overrides(o)) for o in job_overrides)) if len(job_overrides) > 1 else set()
        for overrides in job_overrides:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            plain = OmegaConf.to_container(cfg, resolve=False)
            plain.pop("hydra", None)
            plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
            label = " ".join(o for o in filter_overrides(overrides) if o not in shared)
            row = plan_row(label, plain, Path(plain.get("results_dir", "results")))
            rows.append(row)
            returns.append(JobReturn(overrides=list(overrides), cfg=cfg, working_dir=os.getcwd(),
                                     task_name="plan", status=JobStatus.COMPLETED,
                                     _return_value=row.trainable))
        if shared:
            print("every run: " + " ".join(o for o in filter_overrides(job_overrides[0]) if o in shared))
        print(format_plan(rows), flush=True)
        return returns
