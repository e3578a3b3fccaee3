"""hydra/sweeper=optuna's keys (conf/hydra/sweeper/optuna.yaml) as plain values: an unknown key, a
bad n_trials or n_jobs, a storage no process could open fail here, when Hydra makes the sweeper. The
keys checked when the sweep starts (max_failure_rate, custom_search_space: one line, exit 2) are
checked by the sweep, beside hydra.launcher.retries.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..errors import ConfigError
from ..run.study_storage import check_storage
from .failure_rate import DEFAULT as DEFAULT_FAILURE_RATE


@dataclass
class OptunaSettings:
    """hydra/sweeper=optuna's keys (conf/hydra/sweeper/optuna.yaml), as plain values."""

    sampler: Any = "tpe"
    seed: int | None = None
    direction: Any = "maximize"
    objectives: list[str] = field(default_factory=lambda: ["objective.value"])
    study_name: str | None = None
    storage: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    pruner: Any = "none"
    params: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    max_failure_rate: Any = DEFAULT_FAILURE_RATE  # checked when the sweep starts (failure_rate.py)
    custom_search_space: str | None = None         # a dotted path, loaded when the sweep starts

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "OptunaSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known - {"_target_"})
        if unknown:
            raise ConfigError(f"hydra.sweeper: unknown Optuna setting(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def __post_init__(self) -> None:
        if int(self.n_trials) < 1 or int(self.n_jobs) < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs}: both must be at least 1")
        self.n_trials, self.n_jobs = int(self.n_trials), int(self.n_jobs)
        self.objectives = [str(o) for o in (self.objectives or ["objective.value"])]
        self.params = dict(self.params or {})
        # null or empty: the results store's default; a spelling no process could open fails here, at once
        self.storage = check_storage(self.storage) if self.storage not in (None, "") else None
