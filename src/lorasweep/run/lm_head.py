"""The causal-LM SFT loss with the LM head applied only to the positions that carry loss.

An SFT batch trains on its completions only: an MCQ answer is a few tokens after a ~80-token prompt.
trl's SFTTrainer (1.16) scores every position through the LM head on a CPU (its fused head drops the
masked rows only where Triton runs, to keep tile shapes fixed for compilers): (batch x length x
vocab) multiply-adds for a handful of useful rows, and the vocabulary is large (49,152 for
SmolLM2, 151,936 for Qwen3). Here the decoder runs once, the hidden states whose next-token label
is not -100 are gathered, and the head multiplies those rows only.

The loss is the one trl computes: the summed negative log-likelihood of the kept tokens over
`num_items_in_batch` (the tokens of the whole gradient-accumulation step, as the Trainer counts
them), or over their own count when it is None. The metrics trl logs from its fused head (entropy,
mean_token_accuracy) come from the same kept logits. Every other position's logit cannot change
the loss or its gradient, so the numbers differ from the full-logits ones by float rounding only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
BACKBONE_INPUTS = ("input_ids", "attention_mask", "position_ids")  # what a text SFT batch feeds the decoder


@dataclass
class KeptLoss:
    loss: torch.Tensor       # the training loss (differentiable)
    n: torch.Tensor          # tokens that carry loss in this micro-batch
    entropy_sum: torch.Tensor  # summed entropy of their next-token distributions (no grad)
    correct: torch.Tensor    # how many of them are the argmax (first maximum, as trl counts)


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder under the LM head, through peft's wrapper: peft injects its adapters (and trainable
    token rows) into the modules in place, so calling the decoder directly applies them."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model  # the module named by base_model_prefix (model.model, gpt2's transformer)


def kept_rows_loss(model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> KeptLoss:
    """The SFT loss of `inputs` (with `labels`, -100 where untrained), the head on kept rows only."""
    feed = {k: v for k, v in inputs.items() if k in BACKBONE_INPUTS}
    hidden = backbone(model)(**feed, use_cache=False).last_hidden_state
    labels = inputs["labels"][:, 1:].to(hidden.device)  # position t predicts token t + 1
    mask = labels != IGNORE
    rows = hidden[:, :-1][mask]
    # the model's own head module: a Linear, or peft's wrapper holding trained injected-token rows
    logits = model.get_output_embeddings()(rows).float()
    targets = labels[mask]
    nll = F.cross_entropy(logits, targets, reduction="sum")
    n = mask.sum()
    # clamped like trl's, so a micro-batch with nothing to learn gives a finite 0 (still connected to the model)
    loss = nll / (n.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    with torch.no_grad():
        log_p = logits.log_softmax(-1)
        entropy_sum = -(log_p.exp() * log_p).sum()
        correct = (logits.argmax(-1) == targets).sum()
    return KeptLoss(loss, n, entropy_sum, correct)
