"""Completion on an encoder-decoder (t5, bart, ...): the prompt is the encoder's input, the completion
the decoder's labels, as the T5 NL2Bash tutorial trains it (padded labels are -100: no loss there).

Scored with the metrics of a causal-LM completion (tasks/generation.py: loss and token accuracy by
teacher forcing over the completion's tokens, each ± SE), exact match by greedy `generate` from the
encoder input. `train.max_length` cuts each side: the prompt as the tokenizer truncates it (its
closing special token kept), the completion (with its eos) to its first max_length tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .generation import completion_ids, summary

IGNORE = -100  # a label the loss skips: padding


def encode(tokenizer, row: dict, max_length: int) -> tuple[list[int], list[int]]:
    """(encoder input ids, label ids) of a prompt -> completion row."""
    prompt = tokenizer(row["prompt"], truncation=True, max_length=max_length)["input_ids"]
    return prompt, completion_ids(tokenizer, row["completion"])[:max_length]


def encode_rows(rows: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    """The Trainer's examples, unpadded: the collator pads each batch to its longest row."""
    out = []
    for row in rows:
        prompt, labels = encode(tokenizer, row, max_length)
        out.append({"input_ids": prompt, "attention_mask": [1] * len(prompt), "labels": labels})
    return out


def collator(tokenizer):
    """Pads inputs with the pad token and labels with -100; the model makes its decoder inputs from
    the labels (shifted right after its decoder start token)."""
    from transformers import DataCollatorForSeq2Seq  # imported where a run trains: a sweep plans without it

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)


@torch.no_grad()
def evaluate(model, tokenizer, rows: Sequence[dict], batch_size: int, max_length: int,
             max_new_tokens: int = 0) -> dict[str, float]:
    """loss (± SE), token_accuracy (± SE), exact_match (± SE), n (examples), n_tokens."""
    was_training = model.training
    model.eval()
    pairs = [encode(tokenizer, row, max_length) for row in rows]
    pad = tokenizer.pad_token_id or 0
    nll, hits, tokens, texts = [], 0, 0, []
    new_tokens = max_new_tokens or max(len(c) for _, c in pairs) + 4
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        ids, mask = _padded([p for p, _ in batch], pad)
        labels, _ = _padded([c for _, c in batch], IGNORE)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, labels=labels.to(device)).logits.float()
        for i, (_, c) in enumerate(batch):
            pred, target = logits[i, :len(c)], torch.tensor(c, device=logits.device)  # position t predicts label t
            nll.append(F.cross_entropy(pred, target, reduction="sum").item() / len(c))
            hits, tokens = hits + int((pred.argmax(-1) == target).sum()), tokens + len(c)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)  # the decoder start token is special
    model.train(was_training)
    return summary(nll, hits, tokens, texts, rows)


def _padded(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask (an encoder-decoder needs no left padding to generate)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask
