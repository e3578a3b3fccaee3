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


def has_causal_lm(model_type: str) -> bool:
    """A decoder with a causal-LM head in transformers: in its causal-LM auto mapping and not an
    encoder there for its masked-LM model's sake (bert, roberta and electra have an LM head too)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def has_head(model_type: str, head: str) -> bool:
    """Whether transformers has the task's head for this model type (classification, seq2seq_lm)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    if head == "causal_lm":
        return has_causal_lm(model_type)
    names = {"classification": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
             "seq2seq_lm": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}[head]
    return model_type in names


def task_head(model: ModelSpec, kind: str) -> str:
    """The head a task of `kind` trains on `model`, decided here only: a sequence-classification head
    for classification; for chat, completion and mcq a causal LM, except completion on an
    encoder-decoder (a seq2seq LM head in transformers and no causal-LM one: t5, bart, ...), which
    trains as seq2seq: the prompt is the encoder's input, the completion the decoder's labels.
    Reads config.json's model_type for a model=hf folder or hub id (no weights)."""
    return _head_for(_model_type(model), kind)


def _head_for(model_type: str, kind: str) -> str:
    if kind == "classification":
        return "classification"
    if kind == "completion" and not has_causal_lm(model_type) and has_head(model_type, "seq2seq_lm"):
        return "seq2seq_lm"
    return "causal_lm"


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
    token_ids: tuple[int, ...] = ()  # ids the injected tokens will get (tokens.new not yet in the vocabulary)

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.predicted > self.budget

    @property
    def covers(self) -> str:
        """For lora.proj=all, the modules it adapts, as a reader checks them: "28 modules: self_attn.q_proj,
        ..., mlp.down_proj" (each name without its layer prefix, once); "" for a code of letters."""
        if self.spec.lora.proj != projections.ALL or not self.targets:
            return ""
        return f"{len(self.targets)} modules: {', '.join(projections.module_tails(list(self.targets)))}"

    def folder(self, store: Path) -> Path:
        """This run's folder in the results store `store`."""
        return run_dir(store, self.spec.slug, self.spec.run_key)


def plan_run(cfg: Mapping[str, Any]) -> Plan:
    """Validate a composed config and count its run. Raises ConfigError on bad input."""
    spec, budget, auto = checked_spec(cfg)  # the config's own values, the machine's GPU (config/checks.py)
    task = load_task(spec.task)
    model_type = _model_type(spec.model)  # a model=hf one's config.json, read once for both
    head = _head_for(model_type, spec.task.kind)
    _check_head(spec, head, model_type)
    token_ids, vocab = (), None
    if spec.tokens.new:  # the tokenizer alone says which tokens are new and where they go
        token_ids = lorasweep_tokens.planned_ids(loading.load_tokenizer(spec.model), spec.tokens.new)
        config_vocab = _skeleton(spec.model, head, task.num_labels).get_input_embeddings().weight.shape[0]
        vocab = lorasweep_tokens.vocab_size_for(config_vocab, token_ids)
    skeleton = _skeleton(spec.model, head, task.num_labels, vocab)
    token_cost = (params.trainable_token_rows(skeleton, token_ids)
                  if spec.method in methods.ADAPTER_METHODS and spec.tokens.train else 0)
    targets: list[str] = []
    if spec.method in methods.ADAPTER_METHODS:
        targets = projections.resolve_modules(skeleton, spec.model.family, spec.lora.proj, skeleton.config,
                                              projections=spec.model.projections, head=head)
        methods.check_targets(spec, skeleton, targets)  # what peft cannot adapt as asked (MoE experts)
        if auto:
            rank = params.largest_rank_within(skeleton, spec.method, targets, head, budget - token_cost)
            spec = from_config(with_rank(cfg, rank))
    predicted = params.predict_trainable(skeleton, spec.method, targets, spec.lora.r, head)
    predicted += token_cost
    if task.fingerprint:  # a dataset's rows as read: a changed dataset is a new run key
        spec = replace(spec, task=replace(spec.task, fingerprint=task.fingerprint))
    return Plan(spec=spec, task=task, targets=tuple(targets), predicted=predicted,
                base_total=sum(p.numel() for p in skeleton.parameters()), budget=budget, head=head,
                auto_rank=auto and spec.method in methods.ADAPTER_METHODS, token_ids=token_ids)


def skeleton(plan: Plan) -> nn.Module:
    """The run's architecture on the meta device, as planned (cached: a sweep's runs share it)."""
    return _skeleton(plan.spec.model, plan.head, plan.task.num_labels)


def _check_head(spec: RunSpec, head: str, model_type: str) -> None:
    """A task whose head the model type lacks in transformers: refused before anything is built."""
    if has_head(model_type, head):
        return
    task = f"task {spec.task.name} ({spec.task.kind})"
    if head == "causal_lm" and has_head(model_type, "seq2seq_lm"):
        raise ConfigError(f"{task} trains a causal LM; model={spec.model.name} is a {model_type} model, an "
                          f"encoder-decoder with no causal-LM head in transformers: on it only completion tasks "
                          f"train (as seq2seq); for {spec.task.kind} choose a decoder, e.g. model=smollm2-135m")
    if head == "causal_lm":
        also = ", or an encoder-decoder such as t5 (trained as seq2seq)" if spec.task.kind == "completion" else ""
        raise ConfigError(f"{task} trains a causal LM; model={spec.model.name} "
                          f"is a {model_type} model, which has no causal-LM head in transformers: choose a "
                          f"decoder, e.g. model=smollm2-135m (or llama, qwen3, gpt2, phi3 ... with model=hf){also}")
    raise ConfigError(f"{task} needs a {head} head; model={spec.model.name} "
                      f"is a {model_type} model, which has none in transformers")


def _model_type(spec: ModelSpec) -> str:
    """transformers' model_type: the family, or for a model named by its config.json, that config's."""
    if spec.source == "hf":
        return loading.model_config(spec).model_type
    return spec.family


def _skeleton(spec: ModelSpec, head: str, num_labels: int | None, vocab_size: int | None = None) -> nn.Module:
    return _cached_skeleton(json.dumps(spec.__dict__, sort_keys=True, default=dict), head, num_labels, vocab_size)


@lru_cache(maxsize=8)  # a sweep plans many runs of one architecture: build its skeleton once
def _cached_skeleton(spec_json: str, head: str, num_labels: int | None, vocab_size: int | None) -> nn.Module:
    return loading.build_on_meta(ModelSpec(**json.loads(spec_json)), head, num_labels, vocab_size)
