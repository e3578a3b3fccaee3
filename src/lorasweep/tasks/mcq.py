"""Multiple choice on a causal LM: chat-format SFT examples, and scoring by option log-likelihood.

Each question is shown as one user turn listing the options; the assistant's answer is "B. word"
(task.answer=letter) or "word" (task.answer=option).
Evaluation asks the model for the log-likelihood of every option's answer string after the same
prompt and picks the largest, so no generation or answer parsing is involved.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from datasets import Dataset

from .formats import mcq_answer, mcq_prompt
from .metrics import binomial_se


def prompt_messages(row: dict, instruction: str = "", answer: str = "letter") -> list[dict]:
    """The question as chat messages: the row's system prompt (if any), then the user turn."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return system + [{"role": "user", "content": mcq_prompt(row["question"], row["options"], instruction, answer)}]


def sft_dataset(rows: Sequence[dict], instruction: str = "", answer: str = "letter") -> Dataset:
    """trl's conversational prompt-completion format: the loss covers the answer only."""
    from datasets import Dataset  # here, not at the top: a classification run never pays for it
    return Dataset.from_list([
        {"prompt": prompt_messages(r, instruction, answer),
         "completion": [{"role": "assistant", "content": mcq_answer(r["options"], r["answer"], answer)}]}
        for r in rows])


def prompt_ids(tokenizer, row: dict, instruction: str = "", answer: str = "letter") -> list[int]:
    text = tokenizer.apply_chat_template(prompt_messages(row, instruction, answer), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def evaluate(model, tokenizer, rows: Sequence[dict], batch_size: int, max_length: int,
             instruction: str = "", answer: str = "letter") -> dict[str, float]:
    """Accuracy (argmax of summed option log-likelihood), its SE, n, and the answer's NLL per token.

    `batch_size` counts questions: their prompts run once, and the options continue from the
    prompts' cached keys and values (a question's options share its prefix).
    """
    was_training = model.training
    model.eval()
    items = []
    for row in rows:
        answers = [tokenizer(mcq_answer(row["options"], j, answer), add_special_tokens=False)["input_ids"]
                   for j in range(len(row["options"]))]
        keep = max_length - max(map(len, answers))
        items.append((prompt_ids(tokenizer, row, instruction, answer)[-keep:], answers))  # cut the prompt's start, never an answer
    scores = []
    for start in range(0, len(items), batch_size):
        scores += score_options(model, tokenizer.pad_token_id or 0, items[start:start + batch_size])
    model.train(was_training)
    correct = sum(max(range(len(s)), key=s.__getitem__) == r["answer"] for s, r in zip(scores, rows))
    nll = sum(-s[r["answer"]] / len(a[r["answer"]]) for s, (_, a), r in zip(scores, items, rows))
    n = len(rows)
    acc = correct / n if n else math.nan
    return {"accuracy": acc, "accuracy_se": binomial_se(acc, n), "n": n,
            "loss": nll / n if n else math.nan}


def score_options(model, pad_id: int, items: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """log p(answer | prompt), summed over the answer's tokens, for every (prompt, answers) item.

    Pass 1 runs the left-padded prompts and keeps their cache and last-position logits (which
    predict each answer's first token). Pass 2 runs every answer from its prompt's cache.
    """
    device = next(model.parameters()).device
    prompts = [p for p, _ in items]
    ids, mask = _pad([p for p in prompts], pad_id, left=True)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=_positions(mask).to(device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)           # [questions, vocab]
    owner = torch.tensor([q for q, (_, answers) in enumerate(items) for _ in answers])
    answers = [a for _, ans in items for a in ans]
    cache = out.past_key_values
    cache.batch_select_indices(owner.to(device))                          # one cache row per answer
    a_ids, a_mask = _pad(answers, pad_id, left=False)
    positions = mask.sum(-1)[owner, None] + torch.arange(a_ids.shape[1])
    out = model(input_ids=a_ids.to(device), attention_mask=torch.cat([mask[owner], a_mask], 1).to(device),
                position_ids=positions.to(device), past_key_values=cache, use_cache=False)
    rest = torch.log_softmax(out.logits.float(), dim=-1)                   # [answers, len, vocab]
    flat = []
    for r, (q, a) in enumerate(zip(owner.tolist(), answers)):
        lp = first[q, a[0]] + sum(rest[r, k - 1, a[k]] for k in range(1, len(a)))
        flat.append(float(lp))
    it = iter(flat)
    return [[next(it) for _ in ans] for _, ans in items]


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span], mask[i, span] = torch.tensor(s), 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, so absolute-position models see the same numbers."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
