"""Before launch: a run's validated spec (rank resolved for lora.r=auto), the modules it adapts and
its exact trainable-parameter count against the budget, from configs alone: no weights are read.
What it reads off the model is run/model_facts.py's (kept in the plan cache: a model planned before
on this machine plans without importing transformers).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ..config.checks import checked_spec, with_rank
from ..config.projection_codes import ALL, module_tails
from ..config.spec import ADAPTER_METHODS, RunSpec, from_config
from ..tasks.task import Task, load_task
from .cost import Shape
from .model_facts import model_facts
from .store import run_dir


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    task: Task
    targets: tuple[str, ...]      # full names of the modules the projection code adapts
    predicted: int                # trainable parameters, counted before any weight is read
    base_total: int               # parameters of the base model with its head
    budget: int | None            # budget.max_trainable
    head: str                     # what the task trains on this model (task_head): loading, peft's task type, trainer
    auto_rank: bool               # lora.r was chosen as the largest rank within the budget
    shape: Shape                  # the architecture's per-token costs (run/cost.py): the run's predicted time and memory
    token_ids: tuple[int, ...] = ()  # ids the injected tokens will get (tokens.new not yet in the vocabulary)

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.predicted > self.budget

    @property
    def covers(self) -> str:
        """For lora.proj=all, the modules it adapts, as a reader checks them: "28 modules: self_attn.q_proj,
        ..., mlp.down_proj" (each name without its layer prefix, once); "" for a code of letters."""
        if self.spec.lora.proj != ALL or not self.targets:
            return ""
        return f"{len(self.targets)} modules: {', '.join(module_tails(list(self.targets)))}"

    def folder(self, store: Path) -> Path:
        """This run's folder in the results store `store`."""
        return run_dir(store, self.spec.slug, self.spec.run_key)


def plan_run(cfg: Mapping[str, Any]) -> Plan:
    """Validate a composed config and count its run. Raises ConfigError on bad input."""
    spec, budget, auto = checked_spec(cfg)  # the config's own values, the machine's GPU (config/checks.py)
    task = load_task(spec.task)
    facts = model_facts(spec, task, budget, auto)  # the plan cache's, or read off the model's skeleton
    if facts.rank is not None:  # lora.r=auto: the largest rank within the budget
        spec = from_config(with_rank(cfg, facts.rank))
    if task.fingerprint:  # a dataset's rows as read: a changed dataset is a new run key
        spec = replace(spec, task=replace(spec.task, fingerprint=task.fingerprint))
    return Plan(spec=spec, task=task, targets=facts.targets, predicted=facts.predicted,
                base_total=facts.base_total, budget=budget, head=facts.head, shape=facts.shape,
                auto_rank=auto and spec.method in ADAPTER_METHODS, token_ids=facts.token_ids)
