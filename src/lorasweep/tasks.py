"""A task: its rows (read and checked before any model is loaded), and how to train and score on them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache, partial

from . import classification, mcq
from .data import DataError, load_classification, load_mcq, resolve_data_path
from .spec import TaskSpec, TrainSpec


@dataclass
class Task:
    spec: TaskSpec
    train: list[dict]
    eval: list[dict]
    test: list[dict]
    labels: list[str]  # classification only: class names, ids follow this order

    @property
    def head(self) -> str:
        return "classification" if self.spec.kind == "classification" else "causal_lm"

    @property
    def label_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def num_labels(self) -> int | None:
        return len(self.labels) if self.spec.kind == "classification" else None


@lru_cache(maxsize=16)  # a sweep plans every job before it runs it: read each task's files once
def load_task(spec: TaskSpec) -> Task:
    load = load_classification if spec.kind == "classification" else load_mcq
    train, eval_, test = (load(path, limit) for path, limit in
                          ((spec.train, spec.max_train), (spec.eval, spec.max_eval),
                           (spec.test, spec.max_test)))
    for path, rows in ((spec.train, train), (spec.eval, eval_), (spec.test, test)):
        if not rows:
            raise DataError(f"{path}: no rows (task {spec.name})")
    labels = _labels(spec, train + eval_ + test) if spec.kind == "classification" else []
    return Task(spec, train, eval_, test, labels)


def _labels(spec: TaskSpec, rows: list[dict]) -> list[str]:
    seen = sorted({str(r["label"]) for r in rows})
    if not spec.labels:
        return seen
    path = resolve_data_path(spec.labels)
    try:
        labels = [str(x) for x in json.loads(path.read_text())]
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{spec.labels}: cannot read the label list: {e}") from None
    unknown = sorted(set(seen) - set(labels))
    if unknown:
        raise DataError(f"task {spec.name}: labels {unknown} are not in {spec.labels}")
    return labels


def training_data(task: Task, tokenizer, train: TrainSpec):
    """(train_data, eval_data, collator) in the form the task's trainer takes."""
    if task.spec.kind == "classification":
        enc = partial(classification.encode, tokenizer=tokenizer, label_ids=task.label_ids,
                      max_length=train.max_length)
        return enc(task.train), enc(task.eval), classification.collator(tokenizer)
    return mcq.sft_dataset(task.train), mcq.sft_dataset(task.eval), None


def evaluator(task: Task, tokenizer, rows: list[dict], train: TrainSpec):
    """A function model -> metrics (accuracy, accuracy_se, n, loss) on `rows`."""
    if task.spec.kind == "classification":
        encoded = classification.encode(rows, tokenizer, task.label_ids, train.max_length)
        return lambda model: classification.evaluate(model, tokenizer, encoded, train.eval_batch_size)
    return lambda model: mcq.evaluate(model, tokenizer, rows, train.eval_batch_size, train.max_length)
