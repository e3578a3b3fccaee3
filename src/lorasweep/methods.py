"""Fine-tuning methods behind one interface: prepare(model) -> the model to train.

none  the base model, evaluated only (every ablation's baseline): nothing is trainable
full  every weight is trained
lora  low-rank adapters on the chosen projections (peft); a classification head is trained alongside
dora  LoRA with a learned magnitude vector per adapted weight (peft's use_dora)
"""
from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from .spec import RunSpec

ADAPTER_METHODS = ("lora", "dora")
_TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM,
               "seq2seq_lm": TaskType.SEQ_2_SEQ_LM}


def prepare(model: nn.Module, spec: RunSpec, head: str, targets: list[str]) -> nn.Module:
    """Apply the run's method. `targets` are the full module names resolved from the projection code."""
    if spec.method == "none":
        model.requires_grad_(False)
        return model
    if spec.method == "full":
        model.requires_grad_(True)
        return model
    config = LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=targets,  # exact names: suffix matching would confuse bert's two *output.dense
        use_dora=spec.method == "dora", task_type=_TASK_TYPES[head],
        fan_in_fan_out=spec.model.family == "gpt2")  # GPT-2's Conv1D stores weights transposed
    return get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied weights once; peft's own count for adapted models."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # parameters() yields a tied weight once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapted_modules(model: nn.Module) -> list[str]:
    """Names (as in the base model) of the modules that carry a LoRA adapter."""
    prefix = "base_model.model."
    return [name.removeprefix(prefix) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and len(getattr(module, "lora_A")) > 0]
