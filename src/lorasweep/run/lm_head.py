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
mean_token_accuracy) come from the same kept rows. Every other position's logit cannot change the
loss or its gradient: the loss is trl's to the bit on the real models checked (bench/lm_head.py),
the gradients differ by float rounding (the backward's matmuls run over fewer rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import trl.trainer.utils
from trl.kernels import ChunkedLogProbFunction

IGNORE = -100
BACKBONE_INPUTS = ("input_ids", "attention_mask", "position_ids")  # what a text SFT batch feeds the decoder
CHUNK = getattr(trl.trainer.utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)  # trl's vocabulary tile: its rounding


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


def plain_head(model: torch.nn.Module) -> bool:
    """Whether the logits are the head's output as it is: no soft-capping or scaling in the config
    (gemma, granite, ...), which trl applies in its fused head and which is not reproduced here."""
    config = model.config.get_text_config()
    return all(getattr(config, key, None) is None for key in SCALING_KEYS)


SCALING_KEYS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def kept_rows_loss(model: torch.nn.Module, inputs: dict, num_items_in_batch=None,
                   body: torch.nn.Module | None = None) -> KeptLoss:
    """The SFT loss of `inputs` (with `labels`, -100 where untrained), the head on kept rows only.
    `body`: the decoder to call instead of backbone(model) (a torch.compile'd one, train.compile)."""
    return head_loss(model, decoder_states(model, inputs, body), inputs["labels"], num_items_in_batch)


def decoder_states(model: torch.nn.Module, inputs: dict, body: torch.nn.Module | None = None) -> torch.Tensor:
    """The decoder's last hidden states for `inputs` (what the LM head would multiply)."""
    feed = {k: v for k, v in inputs.items() if k in BACKBONE_INPUTS}
    return (body if body is not None else backbone(model))(**feed, use_cache=False).last_hidden_state


def head_loss(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> KeptLoss:
    """kept_rows_loss from the decoder's hidden states (decoder_states) and their rows' `labels`."""
    labels = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
    mask = labels != IGNORE
    rows, targets = hidden[:, :-1][mask], labels[mask]
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        # trl's own kernel on fewer rows: per row the same tiles and folds as its full-logits loss, so
        # the same rounding (a plain log_softmax over the 49,152 logits drifts from it by ~1e-5 relative)
        log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
            rows, head.weight, head.bias, targets, 1.0, CHUNK, None, 1.0, ("log_probs", "entropy", "is_top1"))
        nll, entropy_sum, correct = -log_probs.sum(), entropy.detach().sum(), is_top1.sum()
    else:
        # peft's wrapper holding trained injected-token rows: the module's own forward, as the model's
        # forward (which lorasweep used for this case before) applies it
        logits = head(rows).float()
        nll = F.cross_entropy(logits, targets, reduction="sum")
        with torch.no_grad():
            log_p = logits.log_softmax(-1)
            entropy_sum = -(log_p.exp() * log_p).sum()
            correct = (logits.argmax(-1) == targets).sum()  # the first maximum, as trl counts
    n = mask.sum()
    # clamped like trl's, so a micro-batch with nothing to learn gives a finite 0 (still connected to the model)
    loss = nll / (n.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return KeptLoss(loss, n, entropy_sum, correct)
