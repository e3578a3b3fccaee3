"""The private APIs of other libraries that lorasweep relies on, in one place.

Each has no public equivalent (said why below). A minor upgrade of the library may break one:
tests/test_compat.py checks each against the installed versions and fails naming what changed, so
an upgrade fails there, loudly, not deep inside a sweep. A leaf module: it imports nothing from
lorasweep, and each library is imported only by the function that needs it (a training worker
that reports to a pruner never imports Hydra's internals).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["basic_sweeper", "apply_overrides", "overrides_dirname", "trial_id", "reopen_trial",
           "job_outcome", "cast_lora_input", "traceable_dora_weight", "peft_moe_renamed", "sft_train_metrics", "count_sft_tokens"]

# Hydra 1.3 -------------------------------------------------------------------------------------
# Composing a job re-reads every YAML file (~0.1 s). Jobs of a sweep that differ from the first in
# plain values reuse its composition with the values set by the same code Hydra's composition
# uses (lorasweep.sweep.compose.JobConfigs); Hydra exposes that code only on its loader's internals.
# BasicSweeper (the -m grid) is Hydra's own sweeper, exposed only under hydra._internal; the grid
# sweeper subclasses it (src/hydra_plugins/lorasweep_grid).


def basic_sweeper() -> type:
    """Hydra's BasicSweeper class (the sweeper behind `-m a=1,2`)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def apply_overrides(overrides: list, node: Any) -> None:
    """Set parsed value overrides on a composed config in place, as Hydra's composition does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(overrides, node)


def overrides_dirname(**kwargs: Any) -> str:
    """hydra.job.override_dirname for a job's task overrides (Hydra's own formatting)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return get_overrides_dirname(**kwargs)


# Optuna 5 --------------------------------------------------------------------------------------
# A run in a worker process reports its evaluations to its trial for pruning. Optuna has no public
# way to reopen a running trial in another process: the worker gets the trial's storage id and
# builds optuna.trial.Trial(study, id), the constructor Optuna itself uses for ask().


def trial_id(trial: Any) -> int:
    """The storage id of a trial (optuna.trial.Trial or FrozenTrial); not its number."""
    return int(trial._trial_id)


def reopen_trial(study: Any, storage_id: int) -> Any:
    """A live optuna.trial.Trial for a RUNNING trial of `study`, from its storage id."""
    import optuna

    return optuna.trial.Trial(study, storage_id)


# submitit 1.5 ----------------------------------------------------------------------------------
# job.result() raises, for a failed job, a FailedJobError whose text wraps the job's traceback in
# submitit's banner and log hints; the driver shows the end of the traceback itself (its last lines
# say why). The private getter returns ("success", result) or ("error", traceback text).


def job_outcome(job: Any) -> tuple[str, Any]:
    """("success", the run's result) or ("error", its traceback); raises submitit's
    UncompletedJobError when the job ended without writing either (killed, cancelled)."""
    return job._get_outcome_and_result()


# peft 0.21 -------------------------------------------------------------------------------------
# A pack applies each run's LoRA to its own rows (model/adapter_pack.py) in place of lora.Linear's
# forward, and must cast those rows as that forward does: to the adapter's dtype, unless the user
# turned casting off (peft.helpers.disable_input_dtype_casting). peft has the rule only as a layer's
# private method.


def cast_lora_input(layer: Any, x: Any, dtype: Any) -> Any:
    """`x` as peft's LoRA layer casts its input for an adapter whose weights are of `dtype`."""
    return layer._cast_input_dtype(x, dtype)


# DoRA's forward gets its base weight through peft's dequantize_module_weight, which tests
# `type(weight).__module__.startswith("torchao.")`: dynamo (torch 2.13) cannot trace that, so a
# compiled DoRA layer breaks the graph there (a compiled pack step, run/pack_compile.py: 36 breaks on a
# 2-layer BERT). torch.compiler.substitute_in_graph gives dynamo a traceable stand-in; eager calls
# the original. peft has no traceable equivalent.


@lru_cache(maxsize=None)  # once a process: dynamo keeps one stand-in a function
def traceable_dora_weight() -> None:
    """Let torch.compile trace peft's dequantize_module_weight where the weight is a plain tensor
    (any other: peft's own code, eagerly, a graph break as before)."""
    import torch
    from peft.utils.integrations import dequantize_module_weight

    untraced = torch.compiler.disable(dequantize_module_weight)

    @torch.compiler.substitute_in_graph(dequantize_module_weight)
    def traceable(module):
        weight = getattr(module, "weight", None)
        if not hasattr(module, "W_q") and type(weight) in (torch.nn.Parameter, torch.Tensor):
            return weight  # what peft returns for a weight that is neither HQQ's nor torchao's
        return untraced(module)


# On transformers 5, peft rewrites a LoraConfig before it builds (utils/transformers_weight_conversion,
# meant for adapters trained on transformers 4): for mixtral, and qwen3_moe by qwen2_moe's table, a
# target_modules entry whose last name is a v4 expert name (w1/w2/w3, gate_proj/up_proj/down_proj, gate)
# becomes a target parameter on the experts. A qwen3_moe model's dense MLP layers (mlp_only_layers) are
# named so: their adapters would land on the experts. The table is private.


@lru_cache(maxsize=None)  # every plan asks: once a model type
def peft_moe_renamed(model_type: str) -> frozenset[str]:
    """Last names of target modules that peft rewrites to MoE expert parameters on `model_type`."""
    from peft.utils import transformers_weight_conversion as conversion
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    base = conversion._MODEL_TO_CONVERSION_PATTERN.get(model_type)
    if base is None or get_checkpoint_conversion_mapping(model_type) is None or \
            not conversion._MOE_FUSED_TARGETS.get(base):
        return frozenset()
    return frozenset(conversion._MOE_TARGET_MODULE_MAPPING.get(base, {}))


# trl 1.16 --------------------------------------------------------------------------------------
# run/loop.py computes an SFT run's training loss itself (the LM head on the loss-carrying rows) and
# logs what trl's compute_loss logs beside it (entropy, mean_token_accuracy, num_tokens). SFTTrainer
# keeps those in private fields, averaged and cleared at each log; it has no public way to add to them.


def sft_train_metrics(trainer: Any) -> dict:
    """The SFTTrainer's training metrics since its last log: {name: [value per step]}."""
    return trainer._metrics["train"]


def count_sft_tokens(trainer: Any, tokens: int) -> int:
    """Add a training batch's token count, gathered over every process (as trl gathers it), to the
    SFTTrainer's running total, as its compute_loss does; returns the total (trl's `num_tokens`)."""
    trainer._total_train_tokens += tokens // trainer._tp_size  # tensor-parallel ranks share one batch
    return trainer._total_train_tokens
