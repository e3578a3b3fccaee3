"""How many tokens a task's rows are, as its trainer and evaluators will see them: what a run's
predicted cost (run/cost.py) is built on. Tokenizing every row takes a fraction of a second for
thousands of rows (a fast tokenizer), far less than planning the run's model.

For each split: the length of every row (truncated at train.max_length, as the trainer cuts it) and,
for a causal LM, the tokens its loss is taken on (the answer: the LM head runs on those rows only,
run/lm_head). A classification row's loss is one label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # .task and the encoders import torch: a sweep checks its configs before that loads
    from .task import Task


@dataclass(frozen=True)
class SplitLengths:
    tokens: tuple[int, ...]     # each row's length in tokens, as trained or scored (cut at max_length)
    kept: tuple[int, ...]       # each row's loss tokens (a causal LM's answer); 1 for a classification label

    @property
    def rows(self) -> int:
        return len(self.tokens)

    def padded(self, batch_size: int) -> float:
        """The mean padded length of a batch: the collators pad each batch to its longest row. Batches
        are taken in the rows' order (a fair sample of a shuffled epoch for any shuffle: the expected
        maximum of `batch_size` rows is what matters)."""
        if not self.tokens:
            return 0.0
        b = max(1, batch_size)
        batches = [self.tokens[i:i + b] for i in range(0, len(self.tokens), b)]
        return sum(max(x) for x in batches) / len(batches)

    def mean(self, which: str = "tokens") -> float:
        values = getattr(self, which)
        return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class TaskLengths:
    train: SplitLengths
    eval: SplitLengths
    test: SplitLengths          # the primary test set and the others, together (each is scored once)
    new_tokens: int = 0         # generation: tokens generated per row when scoring exact match

    @classmethod
    def from_dict(cls, d: dict) -> "TaskLengths":
        """The inverse of dataclasses.asdict (what run/plan_cache stores)."""
        split = lambda s: SplitLengths(tuple(s["tokens"]), tuple(s["kept"]))  # noqa: E731
        return cls(split(d["train"]), split(d["eval"]), split(d["test"]), d["new_tokens"])


def task_lengths(task: Task, tokenizer, max_length: int, head: str) -> TaskLengths:
    """The token lengths of `task`'s rows for a run with `head` (run/model_facts.task_head)."""
    tests = list(task.test) + [r for rows in task.tests.values() for r in rows]
    split = lambda rows: _lengths(task, rows, tokenizer, max_length, head)  # noqa: E731
    new = 0
    if task.spec.kind in ("chat", "completion"):  # exact match generates up to the longest answer + 4
        new = task.spec.max_new_tokens or (max((len(_pair(task, tokenizer, r)[1]) for r in tests), default=0) + 4)
    return TaskLengths(split(task.train), split(task.eval), split(tests), new)


def _lengths(task: Task, rows: Sequence[dict], tokenizer, max_length: int, head: str) -> SplitLengths:
    if task.spec.kind == "classification":
        texts = [r["text"] for r in rows]
        pairs = [r.get("text_pair") for r in rows]
        enc = (tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
               if any(p is not None for p in pairs) else tokenizer(texts, truncation=True, max_length=max_length))
        return SplitLengths(tuple(len(ids) for ids in enc["input_ids"]), (1,) * len(rows))
    from .task import SEQ2SEQ

    tokens, kept = [], []
    for row in rows:
        prompt, answer = _pair(task, tokenizer, row)
        if head == SEQ2SEQ:  # the prompt into the encoder, the answer the decoder's: both run each step
            tokens.append(min(len(prompt), max_length) + min(len(answer), max_length))
            kept.append(min(len(answer), max_length))
            continue
        total = min(len(prompt) + len(answer), max_length)  # trl cuts the row; its answer keeps what is left
        tokens.append(total)
        kept.append(max(0, total - len(prompt)))
    return SplitLengths(tuple(tokens), tuple(kept))


def _pair(task: Task, tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as trained."""
    from . import generation, mcq

    if task.spec.kind == "mcq":
        spec = task.spec
        messages = mcq.prompt_messages(row, spec.instruction, spec.answer) + [
            {"role": "assistant", "content": mcq.mcq_answer(row["options"], row["answer"], spec.answer)}]
        return generation.encode(tokenizer, {"messages": messages})
    return generation.encode(tokenizer, row)
