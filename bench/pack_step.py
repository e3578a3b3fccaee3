"""One training step of K runs packed against the same K runs alone, in one process: where a pack's
time goes (bench/pack.py measures whole sweeps).

    python bench/pack_step.py [--runs 9] [--repeat 6]

The embedded default's model (smollm2-4l, wordnet_topics' 26-class head), the design card's cells
(r=4 qk, r=8 qkvo, r=16 qvkogdu, repeated up to --runs), each built as its run alone builds it
(run/pack.py), on one batch of 16 x 36 random tokens. Times the forward and backward of each run
alone and of the pack (model/adapter_pack: the batches stacked, one base GEMM per layer), then prints
the ops that take the pack's time (torch's profiler, one step).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import compose_config  # noqa: E402

from lorasweep.model.adapter_pack import Block, pack_models  # noqa: E402
from lorasweep.run.pack import _build_alone  # noqa: E402
from lorasweep.run.plan import plan_run  # noqa: E402

CELLS = [("4", "qk"), ("8", "qkvo"), ("16", "qvkogdu")]
BATCH, LENGTH, LABELS = 16, 36, 26


def timed(step, repeat: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=6)
    args = ap.parse_args()
    cells = (CELLS * args.runs)[:args.runs]
    torch.manual_seed(0)
    ids = torch.randint(0, 40000, (BATCH, LENGTH))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, LABELS, (BATCH,))
    alone, models = [], []
    for r, proj in cells:
        model, _ = _build_alone(plan_run(compose_config([f"lora.r={r}", f"lora.proj={proj}"])))
        model.train()
        alone.append(timed(lambda m=model: m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward(),
                           args.repeat))
        models.append(model)
    pack = pack_models(models[0], iter(models[1:]))
    pack.model.train()
    blocks = [Block(a, i * BATCH, (i + 1) * BATCH) for i, a in enumerate(pack.adapters)]
    stacked = {"input_ids": ids.repeat(len(cells), 1), "attention_mask": mask.repeat(len(cells), 1)}

    def packed_step():
        with pack.blocks(blocks):
            logits = pack.model(**stacked).logits
        torch.stack([F.cross_entropy(logits[b.rows], labels) for b in blocks]).sum().backward()

    packed = timed(packed_step, args.repeat)
    print(f"{len(cells)} runs (smollm2-4l, {BATCH} x {LENGTH} tokens each), threads {torch.get_num_threads()}")
    print(f"alone: {', '.join(f'{t:.3f}' for t in alone)} s a step; sum {sum(alone):.3f} s")
    print(f"packed: {packed:.3f} s a step for all {len(cells)}; {sum(alone) / packed:.2f}x the runs alone")
    with torch.autograd.profiler.profile() as prof:
        packed_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
