"""Sequence classification: encode (text, label) rows, and evaluate accuracy with its standard error."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .metrics import binomial_se


def encode(rows: Sequence[dict], tokenizer, label_ids: dict[str, int], max_length: int) -> list[dict]:
    """Tokenize without padding: the collator pads each batch to its own longest row. Rows with a
    "text_pair" (GLUE's sentence pairs) are encoded as the tokenizer's pair: [CLS] a [SEP] b [SEP]."""
    texts = [r["text"] for r in rows]
    pairs = [r.get("text_pair") for r in rows]
    if any(p is not None for p in pairs):
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [{"input_ids": ids, "attention_mask": mask, "labels": label_ids[str(r["label"])]}
            for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows)]


def collator(tokenizer):
    from transformers import DataCollatorWithPadding  # imported where a run trains: a sweep plans without it

    return DataCollatorWithPadding(tokenizer)


def evaluate(model, tokenizer, encoded: Sequence[dict], batch_size: int) -> dict[str, float]:
    """Accuracy, its binomial standard error, n, and mean cross-entropy loss."""
    return evaluate_many(lambda batch: [model(**batch).logits], model, tokenizer, encoded, batch_size)[0]


@torch.no_grad()
def evaluate_many(forward: Callable[[dict], list[torch.Tensor]], model, tokenizer, encoded: Sequence[dict],
                  batch_size: int) -> list[dict[str, float]]:
    """`evaluate` for several classifiers at once (a pack's runs, lorasweep.run.pack): `forward(batch)`
    gives each one's logits for the batch; `model` is put in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    collate = collator(tokenizer)
    # Batches of similar lengths: each batch pads to its longest row, and on WordNet glosses sorting
    # cuts the padded tokens 2.4x (43 -> 18 a row at batch 64). Sums do not depend on the order.
    by_length = sorted(encoded, key=lambda e: len(e["input_ids"]))
    correct, loss_sum = None, None
    for start in range(0, len(by_length), batch_size):
        batch = collate(by_length[start:start + batch_size]).to(_device(model))
        labels = batch.pop("labels")
        outputs = [logits.float() for logits in forward(batch)]
        correct = correct or [0] * len(outputs)
        loss_sum = loss_sum or [0.0] * len(outputs)
        for i, logits in enumerate(outputs):
            loss_sum[i] += F.cross_entropy(logits, labels, reduction="sum").item()
            correct[i] += (logits.argmax(-1) == labels).sum().item()
    model.train(was_training)
    n = len(encoded)
    return [_metrics(c, s, n) for c, s in zip(correct or [0], loss_sum or [0.0])]


def _metrics(correct: int, loss_sum: float, n: int) -> dict[str, float]:
    acc = correct / n if n else math.nan
    return {"accuracy": acc, "accuracy_se": binomial_se(acc, n), "n": n,
            "loss": loss_sum / n if n else math.nan}


def _device(model) -> torch.device:
    return next(model.parameters()).device
