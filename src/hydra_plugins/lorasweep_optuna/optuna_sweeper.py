"""`python launch.py -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 'lora.r=choice(4,8,16)' ...`

Hydra's side of the Optuna search: takes the keys of conf/hydra/sweeper/optuna.yaml and hands the
sweep to lorasweep.sweep.optuna_study (imported only when a sweep starts: Hydra imports this module
at every `python launch.py` to find its plugins, and optuna takes a second to import).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lorasweep.sweep.compose import JobConfigs


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from lorasweep.console import say
        from lorasweep.errors import ConfigError
        from lorasweep.sweep.optuna_settings import OptunaSettings

        try:  # an unknown key or a bad n_trials fails here, by name, in one line (not as Hydra's instantiate error)
            self.settings = OptunaSettings.from_config(
                {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in settings.items()})
        except ConfigError as e:
            say(f"sweep: {e}; nothing was trained")
            raise SystemExit(2) from None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # runs go to lorasweep's executors directly (results, not return values): no Hydra launcher
        self.config, self.hydra_context = config, hydra_context

    def sweep(self, arguments: list[str]) -> None:
        from lorasweep.executors.factory import PLAN_LAUNCHER
        from lorasweep.run.store import store_dir
        from lorasweep.sweep.interrupts import exit_status
        from lorasweep.sweep.optuna_study import OptunaSweep

        assert self.config is not None and self.hydra_context is not None
        configs = JobConfigs(self.hydra_context.config_loader, self.config)  # trials differ in values: reused
        launcher = OmegaConf.select(self.config, "hydra.launcher")  # slurm: trials run as SLURM jobs
        launcher = OmegaConf.to_container(launcher, resolve=True) if launcher is not None else None
        sweep_dir = OmegaConf.select(self.config, "hydra.sweep.dir")  # optimization_results.yaml goes there
        if (launcher or {}).get("_target_") == PLAN_LAUNCHER:  # what the study would cost; nothing trains
            from lorasweep.sweep.optuna_plan import plan_study

            with exit_status():
                plan_study(self.settings, configs, arguments)
            return
        with exit_status():  # the sweep's SweepExit: this process's exit status
            OptunaSweep(self.settings, lambda overrides: configs(overrides)[1], launcher, store_dir(self.config),
                        sweep_config=self.config, sweep_dir=Path(sweep_dir) if sweep_dir else None).run(arguments)
