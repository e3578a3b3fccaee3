"""Before launch: a run's validated spec (rank resolved for lora.r=auto), the modules it adapts and
its exact trainable-parameter count against the budget, from configs alone: no weights are read.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..config.spec import ModelSpec, RunSpec, from_config
from ..errors import ConfigError
from ..model import loading, methods, params, projections
from ..model import tokens as lorasweep_tokens
from ..tasks.task import Task, load_task
from .store import run_dir


CAUSAL_FAMILIES = ("llama", "qwen3", "gpt2")  # the families with a real causal-LM head
# Set by a sweep's driver from hydra.launcher.gpus_per_run (sweep/grid): the run trains with this
# many data-parallel ranks (executors/data_parallel). Not run-defining: the same run on 1 or N GPUs.
DATA_PARALLEL = "data_parallel"


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
    budget = max_trainable(cfg)
    auto = str((cfg.get("lora") or {}).get("r")) == "auto"
    if auto and budget is None:
        raise ConfigError("lora.r='auto' needs a budget to fit: set budget.max_trainable (e.g. budget=1m)")
    spec = from_config(_with_rank(cfg, 1) if auto else cfg)
    methods.check_available(spec.method)  # qlora without CUDA/bitsandbytes: say so now, not after loading
    check_data_parallel(spec, data_parallel(cfg))
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
            spec = from_config(_with_rank(cfg, rank))
    predicted = params.predict_trainable(skeleton, spec.method, targets, spec.lora.r, task.head)
    predicted += token_cost
    return Plan(spec=spec, task=task, targets=tuple(targets), predicted=predicted,
                base_total=sum(p.numel() for p in skeleton.parameters()), budget=budget,
                auto_rank=auto and spec.method in methods.ADAPTER_METHODS, token_ids=token_ids)


def data_parallel(cfg: Mapping[str, Any]) -> int:
    """How many data-parallel ranks train this run (1: one process, as always)."""
    return int(cfg.get(DATA_PARALLEL) or 1)


def check_data_parallel(spec: RunSpec, ranks: int) -> None:
    """A run that cannot train on `ranks` data-parallel ranks: a ConfigError before anything loads."""
    if ranks <= 1:
        return
    where = f"hydra.launcher.gpus_per_run={ranks}"
    if spec.method in methods.QUANTIZED_METHODS:  # its base is loaded onto GPU 0 whole (device_map), untested per rank
        raise ConfigError(f"method={spec.method} cannot train data-parallel ({where}): a quantized base is "
                          f"loaded onto one GPU; use gpus_per_run=1, or method=lora/dora")
    if spec.train.batch_size % ranks:  # train.batch_size is the run's global batch: each rank takes a share
        raise ConfigError(f"train.batch_size={spec.train.batch_size} is not divisible by {where}: the batch "
                          f"is the run's whole batch, split evenly between its {ranks} ranks; use a multiple "
                          f"of {ranks}")


def max_trainable(cfg: Mapping[str, Any]) -> int | None:
    value = (cfg.get("budget") or {}).get("max_trainable")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"budget.max_trainable={value!r} is invalid: a positive number of trainable "
                          f"parameters (e.g. 1000000), or null for no budget")
    return value


def _with_rank(cfg: Mapping[str, Any], r: int) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(cfg))
    cfg["lora"] = {**(cfg.get("lora") or {}), "r": r}
    return cfg


def _skeleton(spec: ModelSpec, head: str, num_labels: int | None, vocab_size: int | None = None) -> nn.Module:
    return _cached_skeleton(json.dumps(spec.__dict__, sort_keys=True, default=dict), head, num_labels, vocab_size)


@lru_cache(maxsize=8)  # a sweep plans many runs of one architecture: build its skeleton once
def _cached_skeleton(spec_json: str, head: str, num_labels: int | None, vocab_size: int | None) -> nn.Module:
    return loading.build_on_meta(ModelSpec(**json.loads(spec_json)), head, num_labels, vocab_size)
