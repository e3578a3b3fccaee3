"""Generation tasks on a causal LM: chat (the last assistant turn) and prompt -> completion.

Training is trl's prompt-completion SFT (the loss covers the completion only). Evaluation reports
three numbers, because at small sizes exact match alone is near zero and says little:
- loss: mean negative log-likelihood per completion token (teacher forcing), with its SE across examples;
- token_accuracy: share of completion tokens the model ranks first given the true prefix, with a
  binomial SE over tokens (tokens of one example are not independent: read it as a lower bound);
- exact_match: greedy generation equals the reference (whitespace-stripped), with its binomial SE.
Completion on an encoder-decoder trains and is scored as seq2seq (tasks/seq2seq.py), with the same
metrics (summary).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from .metrics import binomial_se

if TYPE_CHECKING:
    from datasets import Dataset


def sft_dataset(rows: Sequence[dict], kind: str) -> Dataset:
    """trl's prompt-completion format: conversational for chat rows, plain text for completion rows."""
    from datasets import Dataset  # here, as in mcq: planning a sweep imports this module, not datasets
    if kind == "chat":
        return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                                  for r in rows])
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def reference(row: dict) -> str:
    """The text the model should produce: the last assistant message, or the completion."""
    return row["messages"][-1]["content"] if "messages" in row else row["completion"]


def encode(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as the model sees them in training.

    Chat: the completion is what the chat template adds after the generation prompt (the reply
    and its end-of-turn marker). Completion: the text plus the eos token, as trl appends it.
    """
    if "messages" in row:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns (rare): fall back
            full = prompt + row["messages"][-1]["content"] + (tokenizer.eos_token or "")
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids(prompt), ids(full[len(prompt):])
    return tokenizer(row["prompt"])["input_ids"], completion_ids(tokenizer, row["completion"])


def completion_ids(tokenizer, text: str) -> list[int]:
    """A completion's tokens as trained: the text plus the eos token, as trl appends it."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return tokenizer(text, add_special_tokens=False)["input_ids"] + eos


@torch.no_grad()
def evaluate(model, tokenizer, rows: Sequence[dict], batch_size: int, max_length: int,
             max_new_tokens: int = 0) -> dict[str, float]:
    """loss (± SE), token_accuracy (± SE), exact_match (± SE), n (examples), n_tokens."""
    was_training = model.training
    model.eval()
    pairs = []
    for row in rows:
        prompt, completion = encode(tokenizer, row)
        completion = completion[:max_length - 1]
        pairs.append((prompt[-(max_length - len(completion)):], completion))  # cut the prompt's start
    nll, hits, tokens = [], 0, 0
    for start in range(0, len(pairs), batch_size):
        for ex_nll, ex_hits, n in _teacher_forced(model, tokenizer.pad_token_id or 0, pairs[start:start + batch_size]):
            nll.append(ex_nll / n)
            hits, tokens = hits + ex_hits, tokens + n
    new_tokens = max_new_tokens or max(len(c) for _, c in pairs) + 4
    texts: list[str] = []
    for start in range(0, len(pairs), batch_size):
        texts += _greedy(model, tokenizer, [p for p, _ in pairs[start:start + batch_size]], new_tokens)
    model.train(was_training)
    return summary(nll, hits, tokens, texts, rows)


def summary(nll: list[float], hits: int, tokens: int, texts: list[str], rows: Sequence[dict]) -> dict[str, float]:
    """The metrics from per-example mean NLLs, completion tokens ranked first (`hits` of `tokens`) and
    the generated `texts` (exact match against each row's reference, whitespace-stripped)."""
    exact = sum(t.strip() == reference(r).strip() for t, r in zip(texts, rows))
    n = len(rows)
    loss = sum(nll) / n if n else math.nan
    loss_se = (math.sqrt(sum((x - loss) ** 2 for x in nll) / (n - 1) / n) if n > 1 else math.nan)
    tok_acc = hits / tokens if tokens else math.nan
    em = exact / n if n else math.nan
    return {"loss": loss, "loss_se": loss_se, "token_accuracy": tok_acc,
            "token_accuracy_se": binomial_se(tok_acc, tokens), "exact_match": em,
            "exact_match_se": binomial_se(em, n), "n": n, "n_tokens": tokens}


def _teacher_forced(model, pad_id: int, pairs: list[tuple[list[int], list[int]]]):
    """Per example: (summed NLL of the completion, completion tokens ranked first, completion length)."""
    device = next(model.parameters()).device
    seqs = [p + c for p, c in pairs]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    out = []
    for i, (p, c) in enumerate(pairs):
        pred = logits[i, len(p) - 1:len(p) + len(c) - 1]  # position t predicts token t + 1
        target = torch.tensor(c, device=pred.device)
        out.append((F.cross_entropy(pred, target, reduction="sum").item(),
                    int((pred.argmax(-1) == target).sum()), len(c)))
    return out


def _greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of left-padded prompts, decoded without special tokens."""
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad,
                         eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
