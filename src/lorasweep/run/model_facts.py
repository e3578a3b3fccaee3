"""What planning reads off a run's model, from its meta-device skeleton and tokenizer (no weights):
the head its task trains, the modules its projection code adapts, its trainable-parameter count and
the architecture's per-token costs. Kept in the plan cache (run/plan_cache.py), so that a model
planned once on this machine is planned again without importing transformers or peft: this module
imports them only when it reads a model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache

from ..config.checks import rank_within
from ..config.spec import ADAPTER_METHODS, ModelSpec, RunSpec
from ..errors import ConfigError
from ..tasks.task import Task
from . import plan_cache
from .cost import Shape


@dataclass(frozen=True)
class ModelFacts:
    head: str                     # what the task trains on this model (task_head)
    targets: tuple[str, ...]      # full names of the modules the projection code adapts
    predicted: int                # trainable parameters, at `rank` where lora.r=auto
    base_total: int               # parameters of the base model with its head
    shape: Shape                  # per-token costs (run/cost.py), for the run's predicted time and memory
    token_ids: tuple[int, ...] = ()  # ids the injected tokens will get
    rank: int | None = None       # lora.r=auto: the largest rank within the budget


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
    Reads config.json's model_type for a model=hf folder or hub id (no weights), and transformers'
    auto mappings: kept in the plan cache, so that a driver asking again (sweep/packs) imports neither."""
    if kind == "classification":
        return "classification"
    kept = plan_cache.cached("head", model, {"kind": kind}, lambda: {"head": _head_for(_model_type(model), kind)})
    return kept["head"]


def _head_for(model_type: str, kind: str) -> str:
    if kind == "classification":
        return "classification"
    if kind == "completion" and not has_causal_lm(model_type) and has_head(model_type, "seq2seq_lm"):
        return "seq2seq_lm"
    return "causal_lm"


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
        from ..model import loading

        return loading.model_config(spec).model_type
    return spec.family


def model_facts(spec: RunSpec, task: Task, budget: int | None, auto: bool) -> ModelFacts:
    """The run's model facts: from the plan cache, or read off its skeleton (and kept). ConfigError
    for what the model cannot do as asked (a head it lacks, a letter it has no module for, ...).
    What is kept does not depend on the rank or the budget: a run's count is fixed + r x per_rank
    (model/params.py), so a rank or budget not planned before is arithmetic, not a new entry."""
    inputs = {"method": spec.method, "proj": spec.lora.proj, "dropout": spec.lora.dropout,
              "tokens": asdict(spec.tokens), "kind": spec.task.kind, "num_labels": task.num_labels}
    kept = plan_cache.cached("facts", spec.model, inputs, lambda: _read(spec, task.num_labels))
    rank = None
    if auto and spec.method in ADAPTER_METHODS:  # the largest rank within the budget, the tokens' rows counted
        rank = rank_within(kept["per_rank"], kept["fixed"], spec.method, budget - kept["token_cost"])
    return ModelFacts(head=kept["head"], targets=tuple(kept["targets"]),
                      predicted=kept["fixed"] + kept["token_cost"] + (rank or spec.lora.r) * kept["per_rank"],
                      base_total=kept["base_total"], shape=Shape(**kept["shape"]),
                      token_ids=tuple(kept["token_ids"]), rank=rank)


def _read(spec: RunSpec, num_labels: int | None) -> dict:
    """What the plan cache keeps of the run's model: read off its skeleton (and tokenizer)."""
    from ..model import loading, methods, params, projections
    from ..model import tokens as lorasweep_tokens

    kind = _model_type(spec.model)  # a model=hf one's config.json, read once for both
    head = _head_for(kind, spec.task.kind)
    _check_head(spec, head, kind)
    token_ids, vocab = (), None
    if spec.tokens.new:  # the tokenizer alone says which tokens are new and where they go
        token_ids = lorasweep_tokens.planned_ids(loading.load_tokenizer(spec.model), spec.tokens.new)
        config_vocab = skeleton(spec.model, head, num_labels).get_input_embeddings().weight.shape[0]
        vocab = lorasweep_tokens.vocab_size_for(config_vocab, token_ids)
    model = skeleton(spec.model, head, num_labels, vocab)
    base_total = sum(p.numel() for p in model.parameters())  # a tied weight once
    token_cost = (params.trainable_token_rows(model, token_ids)
                  if spec.method in ADAPTER_METHODS and spec.tokens.train else 0)
    targets: list[str] = []
    per_rank, fixed = 0, {"full": base_total}.get(spec.method, 0)  # none: nothing trains
    if spec.method in ADAPTER_METHODS:
        targets = projections.resolve_modules(model, spec.model.family, spec.lora.proj, model.config,
                                              projections=spec.model.projections, head=head)
        methods.check_targets(spec, model, targets)  # what peft cannot adapt as asked (MoE experts)
        per_rank, fixed = params.linear_terms(model, spec.method, targets, head)
    return {"head": head, "targets": targets, "per_rank": per_rank, "fixed": fixed, "token_cost": token_cost,
            "base_total": base_total, "shape": asdict(shape(model, targets)), "token_ids": list(token_ids)}


def skeleton(spec: ModelSpec, head: str, num_labels: int | None, vocab_size: int | None = None):
    """The architecture on the meta device (cached: a sweep's runs share it)."""
    return _cached_skeleton(json.dumps(spec.__dict__, sort_keys=True, default=dict), head, num_labels, vocab_size)


@lru_cache(maxsize=8)  # a sweep plans many runs of one architecture: build its skeleton once
def _cached_skeleton(spec_json: str, head: str, num_labels: int | None, vocab_size: int | None):
    from ..model import loading

    return loading.build_on_meta(ModelSpec(**json.loads(spec_json)), head, num_labels, vocab_size)


def shape(model, targets: tuple[str, ...] | list[str]) -> Shape:
    """The architecture's per-token costs, read off its meta-device skeleton."""
    from ..model.params import fans
    from ..model.projections import is_adaptable as linear

    def submodule(name: str):
        try:
            return model.get_submodule(name)
        except AttributeError:  # an expert parameter (peft's target_parameters), not a module
            return None

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear_weights = linear_outputs = 0
    for module in model.modules():
        if module is not head and linear(module):
            fan_in, fan_out = fans(module)
            linear_weights += fan_in * fan_out
            linear_outputs += fan_out
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = next(getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if hasattr(config, k))
    layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, k)), 1)
    adapted = [fans(m) for m in map(submodule, targets) if m is not None and linear(m)]
    return Shape(linear_weights=linear_weights, linear_outputs=linear_outputs,
                 head_weights=head.weight.numel() if head is not None else 0, hidden=int(hidden),
                 layers=int(layers), params=sum(p.numel() for p in model.parameters()),
                 adapted_in=sum(i for i, _ in adapted), adapted_out=sum(o for _, o in adapted),
                 adapted_weights=sum(i * o for i, o in adapted), adapted=len(adapted))
