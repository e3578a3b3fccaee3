"""Multiple choice on a causal LM: chat-format SFT examples, and scoring by option log-likelihood.

Each question is shown as one user turn listing the options; the assistant's answer is "B. word".
Evaluation asks the model for the log-likelihood of every option's answer string after the same
prompt and picks the largest, so no generation or answer parsing is involved.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from datasets import Dataset

from .data import mcq_answer, mcq_prompt
from .metrics import binomial_se


def sft_dataset(rows: Sequence[dict]) -> Dataset:
    """trl's conversational prompt-completion format: the loss covers the answer only."""
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": mcq_prompt(r["question"], r["options"])}],
         "completion": [{"role": "assistant", "content": mcq_answer(r["options"], r["answer"])}]}
        for r in rows])


def prompt_ids(tokenizer, row: dict) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": mcq_prompt(row["question"], row["options"])}],
        tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def evaluate(model, tokenizer, rows: Sequence[dict], batch_size: int, max_length: int) -> dict[str, float]:
    """Accuracy (argmax of summed option log-likelihood), its SE, n, and the answer's NLL per token."""
    was_training = model.training
    model.eval()
    seqs = []  # (row index, option index, prompt ids, answer ids)
    for i, row in enumerate(rows):
        p = prompt_ids(tokenizer, row)
        for j in range(len(row["options"])):
            a = tokenizer(mcq_answer(row["options"], j), add_special_tokens=False)["input_ids"]
            seqs.append((i, j, p[-(max_length - len(a)):], a))  # keep the answer, cut the prompt's start
    scores = [[0.0] * len(r["options"]) for r in rows]
    ntoks = [[1] * len(r["options"]) for r in rows]
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        for (i, j, _, a), lp in zip(chunk, _answer_logprobs(model, tokenizer, chunk)):
            scores[i][j], ntoks[i][j] = lp, len(a)
    model.train(was_training)
    correct = sum(max(range(len(s)), key=s.__getitem__) == r["answer"] for s, r in zip(scores, rows))
    nll = sum(-s[r["answer"]] / t[r["answer"]] for s, t, r in zip(scores, ntoks, rows))
    n = len(rows)
    acc = correct / n if n else math.nan
    return {"accuracy": acc, "accuracy_se": binomial_se(acc, n), "n": n,
            "loss": nll / n if n else math.nan}


def _answer_logprobs(model, tokenizer, chunk) -> list[float]:
    """Sum of log p(answer tokens | prompt) for each (prompt, answer) in the chunk, right-padded."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    longest = max(len(p) + len(a) for _, _, p, a in chunk)
    ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (_, _, p, a) in enumerate(chunk):
        ids[b, :len(p) + len(a)] = torch.tensor(p + a)
        mask[b, :len(p) + len(a)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for b, (_, _, p, a) in enumerate(chunk):
        pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)  # logits at t predict token t+1
        out.append(logprobs[b, pos.to(device), torch.tensor(a, device=device)].sum().item())
    return out
