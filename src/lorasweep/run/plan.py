"""Before launch: a run's validated spec (rank resolved for lora.r=auto), the modules it adapts and
its exact trainable-parameter count against the budget, from configs alone: no weights are read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..config.checks import checked_spec, with_rank
from ..config.spec import ModelSpec, RunSpec, from_config
from ..errors import ConfigError
from ..model import loading, methods, params, projections
from ..model import tokens as lorasweep_tokens
from ..tasks.task import Task, load_task
from .store import run_dir


CAUSAL_FAMILIES = ("llama", "qwen3", "gpt2")  # the families with a real causal-LM head


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    task: Task
    targets: tuple[str, ...]      # full names of the modules the projection code adapts
    predicted: int                # trainable parameters, counted before any weight is read
    base_total: int               # parameters of the base model with its head
    budget: int | None            # budget.max_trainable
    auto_rank: bool               # lora.r was chosen as the largest rank within the budget
    token_ids: tuple[int, ...] = ()  # ids the injected tokens will get (tokens.new not yet in the vocabulary)

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.predicted > self.budget

    def folder(self, store: Path) -> Path:
        """This run's folder in the results store `store`."""
        return run_dir(store, self.spec.slug, self.spec.run_key)


def plan_run(cfg: Mapping[str, Any]) -> Plan:
    """Validate a composed config and count its run. Raises ConfigError on bad input."""
    spec, budget, auto = checked_spec(cfg)  # the config's own values, the machine's GPU (config/checks.py)
    task = load_task(spec.task)
    if task.head == "causal_lm" and spec.model.family not in CAUSAL_FAMILIES:
        raise ConfigError(f"task {spec.task.name} ({spec.task.kind}) trains a causal LM; model={spec.model.name} "
                          f"is a {spec.model.family} model: choose a decoder, e.g. model=smollm2-135m "
                          f"(families {', '.join(CAUSAL_FAMILIES)})")
    token_ids, vocab = (), None
    if spec.tokens.new:  # the tokenizer alone says which tokens are new and where they go
        token_ids = lorasweep_tokens.planned_ids(loading.load_tokenizer(spec.model), spec.tokens.new)
        config_vocab = _skeleton(spec.model, task.head, task.num_labels).get_input_embeddings().weight.shape[0]
        vocab = lorasweep_tokens.vocab_size_for(config_vocab, token_ids)
    skeleton = _skeleton(spec.model, task.head, task.num_labels, vocab)
    token_cost = (params.trainable_token_rows(skeleton, token_ids)
                  if spec.method in methods.ADAPTER_METHODS and spec.tokens.train else 0)
    targets: list[str] = []
    if spec.method in methods.ADAPTER_METHODS:
        targets = projections.resolve_modules(skeleton, spec.model.family, spec.lora.proj, skeleton.config)
        if auto:
            rank = params.largest_rank_within(skeleton, spec.method, targets, task.head, budget - token_cost)
            spec = from_config(with_rank(cfg, rank))
    predicted = params.predict_trainable(skeleton, spec.method, targets, spec.lora.r, task.head)
    predicted += token_cost
    if task.fingerprint:  # a dataset's rows as read: a changed dataset is a new run key
        spec = replace(spec, task=replace(spec.task, fingerprint=task.fingerprint))
    return Plan(spec=spec, task=task, targets=tuple(targets), predicted=predicted,
                base_total=sum(p.numel() for p in skeleton.parameters()), budget=budget,
                auto_rank=auto and spec.method in methods.ADAPTER_METHODS, token_ids=token_ids)


def _skeleton(spec: ModelSpec, head: str, num_labels: int | None, vocab_size: int | None = None) -> nn.Module:
    return _cached_skeleton(json.dumps(spec.__dict__, sort_keys=True, default=dict), head, num_labels, vocab_size)


@lru_cache(maxsize=8)  # a sweep plans many runs of one architecture: build its skeleton once
def _cached_skeleton(spec_json: str, head: str, num_labels: int | None, vocab_size: int | None) -> nn.Module:
    return loading.build_on_meta(ModelSpec(**json.loads(spec_json)), head, num_labels, vocab_size)
