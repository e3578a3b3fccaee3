"""hydra/sweeper=optuna's keys (conf/hydra/sweeper/optuna.yaml) as plain values: an unknown key, a
bad n_trials or n_jobs, a storage no process could open fail here, when Hydra makes the sweeper. The
keys checked when the sweep starts (max_failure_rate, custom_search_space: one line, exit 2) are
checked by the sweep, beside hydra.launcher.retries.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..console import say
from ..errors import ConfigError
from ..run.study_storage import check_storage, default_storage
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


def storage_spec(storage: str | None, results_dir: Path, cluster: bool) -> str:
    """hydra.sweeper.storage, or the results store's default (a journal file for SLURM jobs: `cluster`)."""
    spec = storage or default_storage(results_dir, cluster)
    if cluster and spec.startswith("sqlite:"):
        say(f"note: sqlite storage with SLURM jobs ({spec}): Optuna's FAQ warns against sqlite on a "
            f"network filesystem; name a journal file (journal:///abs/path/optuna.journal) or a database "
            f"server in hydra.sweeper.storage")
    return spec


def driver_folder(results_dir: Path, storage: str, name: str) -> Path:
    """Where a study's driver claims it: in the results store its drivers share, one folder per
    (storage, study name); the name's odd characters made safe, the hash keeping studies apart."""
    digest = hashlib.sha1(f"{storage}\n{name}".encode()).hexdigest()[:8]
    return results_dir / ".optuna" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:80]}-{digest}"
