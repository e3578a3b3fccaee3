"""A pack's classification evaluation against its runs' evaluations alone, in one process: the test
split of the embedded default (smollm2-4l, wordnet_topics: 1,000 rows) scored by K runs.

    python bench/pack_eval.py [--runs 9] [--repeat 3]

Each repeat times, one after another (so that a busy machine slows each alike):
- alone: each run's model evaluated by itself (tasks/classification.evaluate, eval_batch_size 64);
- pack: the pack's evaluator as a packed sweep calls it (run/pack._evaluator, eval_batch_size 64:
  on a CPU the runs share those 64 rows a forward, at least 8 each);
- pack, 64 a run: eval_batch_size 64 x K, so each run has its 64 rows a forward (K x 64 rows, the
  pack's way before 2026-12-07, and its way on an accelerator).
Prints each way's median seconds and its ratio to alone; the runs' accuracies must agree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import compose_config  # noqa: E402
from pack_step import CELLS  # noqa: E402

from lorasweep.model.adapter_pack import pack_models  # noqa: E402
from lorasweep.run.pack import _build_alone, _evaluator  # noqa: E402
from lorasweep.run.plan import plan_run  # noqa: E402
from lorasweep.tasks import classification  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    plans = [plan_run(compose_config([f"lora.r={r}", f"lora.proj={proj}"])) for r, proj in (CELLS * args.runs)[:args.runs]]
    models = []
    for plan in plans:
        model, tokenizer = _build_alone(plan)
        models.append(model)
    task, train, head = plans[0].task, plans[0].spec.train, plans[0].head
    encoded = classification.encode(task.test, tokenizer, task.label_ids, train.max_length)
    print(f"{len(plans)} runs, {len(task.test)} test rows, eval_batch_size {train.eval_batch_size}, "
          f"{torch.get_num_threads()} threads")

    def alone():
        return [classification.evaluate(m, tokenizer, encoded, train.eval_batch_size) for m in models]
    accuracies = [r["accuracy"] for r in alone()]  # before packing: pack_models takes the runs' adapters
    pack = pack_models(models[0], iter(models[1:]))
    shared = _evaluator(pack, task, tokenizer, task.test, train, head)
    whole = _evaluator(pack, task, tokenizer, task.test, replace(train, eval_batch_size=train.eval_batch_size * len(plans)),
                       head)
    ways = {"pack": lambda: shared(pack.adapters), f"pack, {train.eval_batch_size} a run": lambda: whole(pack.adapters)}
    for way, evaluate in ways.items():
        assert [r["accuracy"] for r in evaluate()] == accuracies, f"{way}: accuracies differ from alone"
    alone_models = [_build_alone(plan)[0] for plan in plans]  # the same runs again (seeded): the pack took the first
    times: dict[str, list[float]] = {"alone": [], **{w: [] for w in ways}}
    for _ in range(args.repeat):
        start = time.perf_counter()
        for m in alone_models:
            classification.evaluate(m, tokenizer, encoded, train.eval_batch_size)
        times["alone"].append(time.perf_counter() - start)
        for way, evaluate in ways.items():
            start = time.perf_counter()
            evaluate()
            times[way].append(time.perf_counter() - start)
    base = statistics.median(times["alone"])
    for way, ts in times.items():
        print(f"{way:<22} {statistics.median(ts):7.1f} s  (min {min(ts):.1f}, max {max(ts):.1f})  "
              f"{statistics.median(ts) / base:5.2f}x alone's time")


if __name__ == "__main__":
    main()
