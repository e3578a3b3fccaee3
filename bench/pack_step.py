"""One training step of K runs packed against the same K runs alone, in one process: where a pack's
time goes (bench/pack.py measures whole sweeps), and each way a pack's layers can apply the adapters.

    python bench/pack_step.py [--runs 9] [--repeat 6] [--products loop,grouped,grouped-by-rank,batched]
    python bench/pack_step.py --products grouped,grouped-compiled     # train.compile=true's step against eager

The embedded default's model (smollm2-4l, wordnet_topics' 26-class head), the design card's cells
(r=4 qk, r=8 qkvo, r=16 qvkogdu, repeated up to --runs), each built as its run alone builds it
(run/pack.py), on one batch of 16 x 36 random tokens. Times the forward and backward of each run
alone, then of the pack with each product (train.pack_product: model/adapter_pack), the products'
steps interleaved so that a busy machine slows each alike; prints each product's median step and its
ratio to the loop's, then the ops that take the pack's time (torch's profiler, one step of the first
product). "grouped-by-rank" is the grouped path without rank padding: a grouped product pair per
rank, over that rank's blocks gathered out of the batch (written here only, to measure it against
the padded one that model/pack_products keeps). A product named "X-compiled" is X's step with its
forward through torch.compile as train.compile=true runs it (run/pack_compile.PackCompile); its
warm-up, which compiles, is timed and printed apart.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import compose_config  # noqa: E402

from lorasweep.compat import cast_lora_input  # noqa: E402
from lorasweep.model import adapter_pack  # noqa: E402
from lorasweep.model.adapter_pack import Block, pack_models  # noqa: E402
from lorasweep.model.pack_products import grouped_alignment, product_dtype  # noqa: E402
from lorasweep.run.pack import _build_alone  # noqa: E402
from lorasweep.run.pack_compile import PackCompile  # noqa: E402
from lorasweep.run.plan import plan_run  # noqa: E402

CELLS = [("4", "qk"), ("8", "qkvo"), ("16", "qvkogdu")]
BATCH, LENGTH, LABELS = 16, 36, 26


def timed(step, repeat: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat


def grouped_by_rank(layer, adapters, sizes, x, result, layouts):
    """grouped_lora's terms (plain LoRA, the design card's cells) with one grouped product pair per
    rank (rounded up to grouped_mm's 16 bytes), each over its blocks' rows gathered out of the batch."""
    dtype = product_dtype(layer, x.device)
    align = grouped_alignment(dtype)
    rows, parts = cast_lora_input(layer, x, torch.float32).split(sizes), list(result.split(sizes))
    classes: dict[int, list[int]] = {}
    for i, name in enumerate(adapters):
        if name in layer.lora_A:
            r = layer.lora_A[name].weight.shape[0]
            classes.setdefault(-(-r // align) * align, []).append(i)
    for width, blocks in classes.items():
        names = [adapters[i] for i in blocks]
        gathered = torch.cat([layer.lora_dropout[n](rows[i]) for n, i in zip(names, blocks)])
        a = torch.stack([F.pad(layer.lora_A[n].weight, (0, 0, 0, width - layer.lora_A[n].weight.shape[0]))
                         for n in names]).to(dtype)
        b = torch.stack([F.pad(layer.lora_B[n].weight, (0, width - layer.lora_B[n].weight.shape[1]))
                         for n in names]).to(dtype)
        tokens = x[0].numel() // x.shape[-1]
        offs = torch.tensor([sizes[i] * tokens for i in blocks], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        flat = gathered.reshape(-1, layer.in_features).to(dtype)
        out = F.grouped_mm(F.grouped_mm(flat, a.transpose(1, 2), offs=offs), b.transpose(1, 2), offs=offs)
        for n, i, o in zip(names, blocks, out.view(*gathered.shape[:-1], -1).split([sizes[i] for i in blocks])):
            parts[i] = parts[i] + o * layer.scaling[n]
    return torch.cat(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--products", default="loop,grouped,grouped-by-rank,batched")
    args = ap.parse_args()
    products = args.products.split(",")
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
    grouped = adapter_pack.grouped_lora
    compiled = PackCompile(pack)

    def packed_step(product: str) -> None:
        way = product.removesuffix("-compiled")
        pack.product = "grouped" if way == "grouped-by-rank" else way
        adapter_pack.grouped_lora = grouped_by_rank if way == "grouped-by-rank" else grouped
        forward = partial(compiled, pack.model) if product.endswith("-compiled") else pack.model
        with pack.blocks(blocks):
            logits = forward(**stacked).logits
        torch.stack([F.cross_entropy(logits[b.rows], labels) for b in blocks]).sum().backward()

    times: dict[str, list[float]] = {p: [] for p in products}
    for p in products:
        start = time.perf_counter()
        packed_step(p)  # warm-up (a compiled product compiles here)
        if p.endswith("-compiled"):
            print(f"{p}: first step (compiling) {time.perf_counter() - start:.1f} s; {compiled.record}")
    for _ in range(args.repeat):  # interleaved: a busy machine slows every product alike
        for p in products:
            start = time.perf_counter()
            packed_step(p)
            times[p].append(time.perf_counter() - start)
    print(f"{len(cells)} runs (smollm2-4l, {BATCH} x {LENGTH} tokens each), threads {torch.get_num_threads()}, "
          f"{args.repeat} steps each")
    print(f"alone: {', '.join(f'{t:.3f}' for t in alone)} s a step; sum {sum(alone):.3f} s")
    base = statistics.median(times[products[0]])
    for p in products:
        t = statistics.median(times[p])
        print(f"packed, {p:<16} {t:.3f} s a step (median; min {min(times[p]):.3f}); "
              f"{base / t:.3f}x the {products[0]}'s speed, {sum(alone) / t:.2f}x the runs alone")
    with torch.autograd.profiler.profile() as prof:
        packed_step(products[0])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
