"""Benchmark 3: step time of DoRA against LoRA on the same run, and what dropout changes.

    python bench/dora.py [--steps 60] [--proj qkvo]

Four runs of the embedded default cut to `--steps` optimiser steps (lora/dora x dropout 0.05/0),
one sweep in one worker, no evaluation along the way. With dropout > 0 peft's DoRA computes the
weight norm on a dropped-out copy of the input; with dropout 0 it reuses the base layer's output
and skips that copy. Prints seconds per step and the DoRA/LoRA ratio per dropout.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _proc import PYTHON, measure, results_in, row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--proj", default="qkvo")
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        measure([PYTHON, "launch.py", "-m", "method=lora,dora", "lora.dropout=0.05,0", f"model={args.model}",
                 f"lora.proj={args.proj}", f"train.max_steps={args.steps}", f"train.eval_steps={10 * args.steps}",
                 "task.max_eval=16", "task.max_test=16", f"results_dir={tmp}"], tmp / "sweep.log")
        per_step = {(r["config"]["method"], r["config"]["lora"]["dropout"]): r["timing"]["train_s"] / r["timing"]["steps"]
                    for r in results_in(tmp)}
    print(f"{args.model}, proj {args.proj}, {args.steps} steps of batch 16 per run; seconds per training step")
    print(row("dropout", "lora", "dora", "dora/lora", widths=(34, 10, 10, 10)))
    for dropout in (0.05, 0.0):
        lora, dora = per_step[("lora", dropout)], per_step[("dora", dropout)]
        print(row(str(dropout), f"{lora:.3f}", f"{dora:.3f}", f"{dora / lora:.2f}x", widths=(34, 10, 10, 10)))


if __name__ == "__main__":
    main()
