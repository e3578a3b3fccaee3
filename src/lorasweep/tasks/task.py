"""A task: its rows (read and checked before any model is loaded), and how to train and score on them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache, partial, wraps

from ..config.paths import resolve_data_path
from ..config.spec import GENERATION_KINDS, TaskSpec, TrainSpec
from ..errors import DataError
from . import hf_data
from .formats import load_chat, load_classification, load_completion, load_mcq

LOADERS = {"classification": load_classification, "mcq": load_mcq, "chat": load_chat,
           "completion": load_completion}
SEQ2SEQ = "seq2seq_lm"  # the head of a completion task on an encoder-decoder (decided in run/model_facts.task_head)


@dataclass
class Task:
    spec: TaskSpec
    train: list[dict]
    eval: list[dict]
    test: list[dict]
    labels: list[str]  # classification only: class names, ids follow this order
    tests: dict[str, list[dict]] = field(default_factory=dict)  # more test sets, by name
    fingerprint: str = ""  # a dataset's (spec.dataset): a hash of its rows read here, for the run key

    @property
    def label_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def num_labels(self) -> int | None:
        return len(self.labels) if self.spec.kind == "classification" else None

    @property
    def objective(self) -> tuple[str, str]:
        """(metric, direction): accuracy where there is one; generation has token accuracy (exact
        match is near zero for small models, so it would not rank runs)."""
        if self.spec.kind in GENERATION_KINDS:
            return "token_accuracy", "maximize"
        return "accuracy", "maximize"


@dataclass(frozen=True)
class TrainingData:
    """What a task's trainer takes: encoded rows (or an SFT dataset) and the batch collator."""

    train: object
    eval: object
    collator: object = None  # None: the trainer's own (trl's, for SFT)


@lru_cache(maxsize=16)  # a sweep plans every job before it runs it: read each task's files once
def load_task(spec: TaskSpec) -> Task:
    """The task's rows, every one checked: from JSONL/CSV files, or (spec.dataset) from a dataset
    read through the `datasets` library (tasks/hf_data.py), whose fingerprint the Task carries."""
    if spec.dataset:
        data = hf_data.load_rows(spec)
        rows, where, known, fingerprint = data.rows, data.where, data.labels, data.fingerprint
    else:
        load = LOADERS[spec.kind]
        files = [("train", spec.train, spec.max_train), ("eval", spec.eval, spec.max_eval),
                 ("test", spec.test, spec.max_test)] + [(name, path, spec.max_test) for name, path in spec.tests]
        rows = {name: load(path, limit) for name, path, limit in files}
        where, known, fingerprint = {name: path for name, path, _ in files}, [], ""
    for name, part in rows.items():
        if not part:
            raise DataError(f"{where[name]}: no rows (task {spec.name})")
    tests = {name: rows[name] for name, _ in spec.tests}
    everything = [r for part in rows.values() for r in part]
    labels = _labels(spec, everything, known) if spec.kind == "classification" else []
    return Task(spec, rows["train"], rows["eval"], rows["test"], labels, tests, fingerprint)


def _labels(spec: TaskSpec, rows: list[dict], known: list[str]) -> list[str]:
    """The class names, ids following their order: task.labels' list, else the dataset's own
    (ClassLabel names), else the labels seen, sorted."""
    seen = sorted({str(r["label"]) for r in rows})
    if not spec.labels:
        return known or seen
    path = resolve_data_path(spec.labels)
    try:
        labels = [str(x) for x in json.loads(path.read_text())]
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{spec.labels}: cannot read the label list: {e}") from None
    unknown = sorted(set(seen) - set(labels))
    if unknown:
        raise DataError(f"task {spec.name}: labels {unknown} are not in {spec.labels}")
    return labels


def training_data(task: Task, tokenizer, train: TrainSpec, head: str) -> TrainingData:
    """The task's rows in the form its trainer takes; `head`: the plan's (run/model_facts.task_head)."""
    from . import classification, generation, mcq, seq2seq  # torch: where a run trains; a sweep plans without it

    kind = task.spec.kind
    if kind == "classification":
        enc = partial(classification.encode, tokenizer=tokenizer, label_ids=task.label_ids,
                      max_length=train.max_length)
        return TrainingData(enc(task.train), enc(task.eval), classification.collator(tokenizer))
    if head == SEQ2SEQ:
        enc = partial(seq2seq.encode_rows, tokenizer=tokenizer, max_length=train.max_length)
        return TrainingData(enc(task.train), enc(task.eval), seq2seq.collator(tokenizer))
    if kind in GENERATION_KINDS:
        return TrainingData(generation.sft_dataset(task.train, kind), generation.sft_dataset(task.eval, kind))
    how = task.spec.instruction, task.spec.answer
    return TrainingData(mcq.sft_dataset(task.train, *how), mcq.sft_dataset(task.eval, *how))


def _router_logits_off(make_evaluator):
    """MoE decoders (mixtral, qwen*_moe): trl's SFTTrainer turns the config's output_router_logits on
    for its load-balancing loss, and a forward with it on computes that loss against the attention mask,
    which in an evaluation with a cache (mcq's options after their prompt, generate) spans more tokens
    than the forward's router logits: transformers 5 raises. Evaluation needs no such loss: it is off
    while an evaluator runs."""
    @wraps(make_evaluator)
    def make(*args, **kwargs):
        evaluate = make_evaluator(*args, **kwargs)

        def run(model):
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            was = getattr(config, "output_router_logits", False)  # set only where the config has it
            if was:
                config.output_router_logits = False
            try:
                return evaluate(model)
            finally:
                if was:
                    config.output_router_logits = was
        return run
    return make


@_router_logits_off
def evaluator(task: Task, tokenizer, rows: list[dict], train: TrainSpec, head: str):
    """A function model -> metrics on `rows`: accuracy, accuracy_se, n, loss (classification, mcq);
    loss, token_accuracy, exact_match, each with its SE, and n (chat, completion; completion on an
    encoder-decoder, `head` seq2seq_lm, as seq2seq)."""
    from . import classification, generation, mcq, seq2seq  # torch: where a run scores; a sweep plans without it

    kind = task.spec.kind
    if kind == "classification":
        encoded = classification.encode(rows, tokenizer, task.label_ids, train.max_length)
        return lambda model: classification.evaluate(model, tokenizer, encoded, train.eval_batch_size)
    if kind in GENERATION_KINDS:
        score = seq2seq.evaluate if head == SEQ2SEQ else generation.evaluate
        return lambda model: score(model, tokenizer, rows, train.eval_batch_size, train.max_length,
                                   task.spec.max_new_tokens)
    return lambda model: mcq.evaluate(model, tokenizer, rows, train.eval_batch_size, train.max_length,
                                      task.spec.instruction, task.spec.answer)
