"""What an executor is sent: a job, one run or a pack of runs trained at once over one base (run/pack),
with what its worker needs beside their configs. The run configs stay as composed: the job carries the
rest (where each run's folder is, the Optuna trial each run reports to, the data-parallel ranks)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Job:
    configs: tuple[dict, ...]     # each run's composed config
    folders: tuple[Path, ...]     # each run's folder in the results store (a SLURM job is found again by them)
    # each run's Optuna trial, {storage, study_name, trial_id, number, pruner, metric}: it reports its
    # evaluations to the trial's pruner (run/pruning); None outside a study, or for a multi-objective one
    trials: tuple[Mapping[str, Any] | None, ...] = ()
    ranks: int = 1                # data-parallel ranks that train a run alone (executors/data_parallel)

    def __post_init__(self) -> None:
        if not self.trials:
            object.__setattr__(self, "trials", (None,) * len(self.configs))

    @classmethod
    def alone(cls, cfg: Mapping[str, Any], folder: Path, trial: Mapping[str, Any] | None = None,
              ranks: int = 1) -> Job:
        return cls((dict(cfg),), (Path(folder),), (trial,), ranks)

    @classmethod
    def pack(cls, cfgs: Sequence[Mapping[str, Any]], folders: Sequence[Path],
             trials: Sequence[Mapping[str, Any] | None] = ()) -> Job:
        return cls(tuple(dict(cfg) for cfg in cfgs), tuple(Path(f) for f in folders), tuple(trials))

    @property
    def is_pack(self) -> bool:
        return len(self.configs) > 1

    @property
    def folder(self) -> Path:
        """Where its log and its SLURM job record go: its first run's folder."""
        return self.folders[0]
