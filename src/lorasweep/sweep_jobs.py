"""What the sweep launchers share: a job's plain config, a short label, and the sweep summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from hydra.core.utils import filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class ContextLauncher(Launcher):
    """A Hydra launcher that keeps the sweep's config and Hydra's context for its launch()."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context


def job_config(config_loader, sweep_config: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, dict]:
    """The job's composed config, and the same as a plain resolved dict without the `hydra` node."""
    cfg = config_loader.load_sweep_config(sweep_config, list(overrides))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)  # its interpolations need Hydra's runtime, and no run reads it
    return cfg, OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def varying_overrides(job_overrides: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(the overrides every job shares, one label per job made of what differs)."""
    lists = [filter_overrides(o) for o in job_overrides]
    shared = set.intersection(*map(set, lists)) if len(lists) > 1 else set()
    labels = [" ".join(o for o in lst if o not in shared) or "(defaults)" for lst in lists]
    return [o for o in (lists[0] if lists else []) if o in shared], labels


@dataclass
class SweepTally:
    """Counts by outcome, and the best run so far (by its objective)."""

    total: int
    counts: dict[str, int] = field(default_factory=dict)
    best: tuple[float, str, dict] | None = None  # (objective value, label, result)

    def add(self, outcome: str, label: str = "", result: dict | None = None) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        objective = (result or {}).get("objective") or {}
        value = objective.get("value")
        if value is not None:
            sign = 1 if objective.get("direction", "maximize") == "maximize" else -1
            if self.best is None or sign * value > sign * self.best[0]:
                self.best = (value, label, result)

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def best_line(self) -> str:
        if self.best is None:
            return "no finished run yet"
        value, label, result = self.best
        se = ((result.get("metrics") or {}).get("test") or {}).get("accuracy_se")
        return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "") + f" ({label})"

    def summary(self) -> str:
        order = ("done", "already done", "over budget", "pruned", "failed", "invalid")
        parts = [f"{self.counts[k]} {k}" for k in order if self.counts.get(k)]
        return f"sweep: {self.total} runs: {', '.join(parts) or 'none finished'}; best: {self.best_line()}"
