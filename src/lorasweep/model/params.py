"""Exact trainable-parameter counts from the architecture alone (a meta-device skeleton: no weights).

The arithmetic mirrors what peft builds, so it is known before anything is launched:
- lora: r x (fan_in + fan_out) per adapted weight (A is r x fan_in, B is fan_out x r);
- MoE experts, a 3-D parameter (experts, a, b) adapted by peft's ParamWrapper: one such pair per
  expert, experts x r x (a + b) (its A is (experts x r) x fan_in, its B fan_out x (experts x r));
- dora: lora plus one magnitude per output feature of each adapted weight;
- a classification head (peft's modules_to_save `classifier` / `score`) is trained alongside;
- full: every parameter, a tied weight once; none: nothing.
Each run records this prediction beside peft's own count and fails if they differ.
"""
from __future__ import annotations

from torch import nn

from ..config.checks import rank_within
from .projections import SEQ_CLS_HEADS, is_conv1d  # SEQ_CLS_HEADS: peft's modules_to_save for classification


def predict_trainable(skeleton: nn.Module, method: str, targets: list[str], r: int, head: str) -> int:
    """Trainable parameters of `method` on `skeleton` with rank r on `targets` (full module names)."""
    if method == "none":
        return 0
    if method == "full":
        return sum(p.numel() for p in skeleton.parameters())  # parameters() yields a tied weight once
    per_rank, fixed = linear_terms(skeleton, method, targets, head)
    return fixed + r * per_rank


def trainable_token_rows(skeleton: nn.Module, token_ids) -> int:
    """Injected tokens trained with peft's trainable_token_indices: one input-embedding row each
    (a tied output layer shares the rows; an untied one is not trained)."""
    return len(token_ids) * skeleton.get_input_embeddings().weight.shape[1]


def largest_rank_within(skeleton: nn.Module, method: str, targets: list[str], head: str, budget: int) -> int:
    """The largest r whose run has at most `budget` trainable parameters (lora.r=auto)."""
    return rank_within(*linear_terms(skeleton, method, targets, head), method, budget)


def linear_terms(skeleton: nn.Module, method: str, targets: list[str], head: str) -> tuple[int, int]:
    """(parameters per unit of rank, parameters independent of rank)."""
    modules, parameters = dict(skeleton.named_modules()), dict(skeleton.named_parameters())
    per_rank = fixed = 0
    for name in targets:
        if name not in modules:  # a 3-D parameter: experts x (fan_in + fan_out); no dora (refused at planning)
            experts, a, b = parameters[name].shape
            per_rank += int(experts) * int(a + b)
            continue
        fan_in, fan_out = fans(modules[name])
        per_rank += fan_in + fan_out
        fixed += fan_out if method == "dora" else 0
    if head == "classification":
        fixed += sum(p.numel() for name, m in skeleton.named_modules()
                     if name.endswith(SEQ_CLS_HEADS) for p in m.parameters())
    return per_rank, fixed


def fans(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a linear layer or a Conv1D."""
    if is_conv1d(module):  # GPT-2 stores its weight as (fan_in, fan_out)
        fan_in, fan_out = module.weight.shape
        return int(fan_in), int(fan_out)
    return int(module.in_features), int(module.out_features)
