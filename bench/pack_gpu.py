"""GPU makespan of 8 LoRA runs on one base: packed (lorasweep.model.adapter_pack) vs one after another vs
8 processes sharing the GPU.

    python bench/pack_gpu.py [--steps 20] [--batch 4] [--seq 512] [--products grouped,loop] [--no-processes]
                             [--no-sequential] [--json rows.json]      # needs CUDA
    python bench/pack_gpu.py --products grouped-compiled,grouped --no-sequential --no-processes
    python bench/pack_gpu.py --tiny --steps 3                           # a smoke test on the CPU

The Qwen3-0.6B architecture with random weights in bf16, causal-LM training on random tokens (every
position carries loss, as a plain LM forward computes it), AdamW per run. The 8 runs are
r = 4, 8, 16, 32 x projections qkvo, qkvogud (the issue's grid), each `--steps` optimizer steps of
`--batch` sequences of `--seq` tokens, after one warm-up step that is not timed:
  packed       one process, one base, 8 adapters: each step one forward and backward over the 8
               runs' batches stacked (model/adapter_pack: each adapter on its own rows), once for
               each way its layers can apply the adapters (train.pack_product): grouped products,
               batched products, one after another (the loop); `--products` picks some.
               "X-compiled" is X with the pack's forward through torch.compile, as
               train.compile=true runs it (run/pack_compile.PackCompile); its warm-up step, which
               compiles, is timed and printed apart (the makespan includes it)
  sequential   one process, the 8 runs one after another, each on its own model (`--no-sequential`
               leaves them out)
  8 processes  8 processes at once on the same GPU, each one run (its start-up included, as a
               sweep's would be; `--no-processes` leaves them out)
Every forward runs under bf16 autocast on a GPU, as the runs' Trainers run it (adapters float32,
their products bf16). Printed: makespan (s), tokens/s (all runs' training tokens over the makespan),
peak GPU memory.
Target: packed at least 3x faster than sequential, and faster than 8 processes. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lorasweep.config.spec import ModelSpec  # noqa: E402
from lorasweep.model.loading import model_config, tiny_config  # noqa: E402
from lorasweep.model.adapter_pack import Block, PackedModel, adapter_name  # noqa: E402
from lorasweep.model.projections import resolve_modules  # noqa: E402
from lorasweep.run.pack_compile import PackCompile  # noqa: E402

PRODUCTS = ("grouped", "batched", "loop")  # train.pack_product: the first is the pack compared below
COMPILED = "-compiled"  # a product's suffix: its forward through torch.compile
RUNS = [(r, proj) for proj in ("qkvo", "qkvogud") for r in (4, 8, 16, 32)]
QWEN = ModelSpec(name="qwen3-0.6b", family="qwen3", source="hub", id="Qwen/Qwen3-0.6B", config="configs/qwen3-0.6b.json")
TINY = ModelSpec(name="tiny-qwen3", family="qwen3", source="tiny")


def setting(args):
    """(device, dtype, model config) for this invocation."""
    if args.tiny:
        return "cpu", torch.float32, tiny_config(TINY)
    if not torch.cuda.is_available():
        sys.exit("bench/pack_gpu.py needs CUDA (or --tiny for a CPU smoke test)")
    return "cuda", torch.bfloat16, model_config(QWEN)


def lora_config(r: int, proj: str, base):
    """The run's LoRA config; `base` the bare model (module names as the projection code resolves them)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type=TaskType.CAUSAL_LM,
                      target_modules=resolve_modules(base, "qwen3", proj, base.config))


def base_model(config, device, dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def autocast(device: str):
    """The Trainer's mixed precision on a GPU (bf16 autocast); none on the CPU."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_alone(config, device, dtype, run: int, args) -> float:
    """One run on its own model: its training time in seconds (warm-up step excluded)."""
    from peft import get_peft_model

    model = base_model(config, device, dtype)
    model = get_peft_model(model, lora_config(*RUNS[run], model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    for step in range(args.steps + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        with autocast(device):
            logits = model(input_ids=ids).logits
        lm_loss(logits, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def train_packed(config, device, dtype, args, product: str) -> tuple[float, dict]:
    """The 8 runs as one pack: its training time in seconds (warm-up step excluded) and the ways its
    layers took (PackedModel.took); `product`: train.pack_product, "-compiled" after it to compile."""
    from peft import get_peft_model

    base = base_model(config, device, dtype)
    configs = [lora_config(r, proj, base) for r, proj in RUNS]
    model = get_peft_model(base, configs[0])
    names = [adapter_name(0)]
    for i, lora in enumerate(configs[1:], start=1):
        model.add_adapter(adapter_name(i), lora)
        names.append(adapter_name(i))
    pack = PackedModel(model, names, product.removesuffix(COMPILED))
    compiled = PackCompile(pack) if product.endswith(COMPILED) else None
    forward = partial(compiled, model) if compiled else model
    opts = [torch.optim.AdamW([p for _, p in pack.named_parameters_of(n)], lr=1e-4) for n in names]
    ids = torch.randint(0, config.vocab_size, (len(names) * args.batch, args.seq), device=device)
    blocks = [Block(n, i * args.batch, (i + 1) * args.batch) for i, n in enumerate(names)]
    warm = time.perf_counter()
    for step in range(args.steps + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        with pack.blocks(blocks), autocast(device):
            logits = forward(input_ids=ids).logits
        torch.stack([lm_loss(logits[b.rows], ids[b.rows]) for b in blocks]).sum().backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if step == 0 and compiled:
            sync(device)
            print(f"{product}: warm-up step (compiling) {time.perf_counter() - warm:.1f} s; {compiled.record}", flush=True)
    sync(device)
    return time.perf_counter() - start, dict(pack.took)


def peak_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4, help="sequences per run per step")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--tiny", action="store_true", help="tiny random Qwen3 on the CPU: a smoke test")
    ap.add_argument("--products", default=",".join(PRODUCTS),
                    help=f"the train.pack_product values to time, the first compared with the rest (default: {','.join(PRODUCTS)})")
    ap.add_argument("--no-processes", action="store_true", help="leave out the 8 processes")
    ap.add_argument("--no-sequential", action="store_true", help="leave out the 8 runs one after another")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child of the 8-process side
    args = ap.parse_args()
    device, dtype, config = setting(args)
    if args.one is not None:
        print(json.dumps({"train_s": train_alone(config, device, dtype, args.one, args)}))
        return
    products = args.products.split(",")
    if unknown := [p for p in products if p.removesuffix(COMPILED) not in PRODUCTS]:
        sys.exit(f"--products: {','.join(unknown)} unknown; valid are {','.join(PRODUCTS)}, each also with {COMPILED}")
    tokens = len(RUNS) * args.steps * args.batch * args.seq
    rows = []
    took_by_product = {}

    for product in products:
        start = time.perf_counter()
        packed_train, took = train_packed(config, device, dtype, args, product)
        rows.append((f"packed, {product} products", time.perf_counter() - start, packed_train, peak_gb(device)))
        took_by_product[product] = took
        print(f"packed with train.pack_product={product}: its layers took {took}")
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    sequential = None
    if not args.no_sequential:
        start = time.perf_counter()
        sequential_train = sum(train_alone(config, device, dtype, i, args) for i in range(len(RUNS)))
        sequential = ("sequential (8 runs, 1 process)", time.perf_counter() - start, sequential_train, peak_gb(device))
        rows.append(sequential)

    if not args.no_processes:
        start = time.perf_counter()
        extra = ["--tiny"] if args.tiny else []
        children = [subprocess.Popen([sys.executable, __file__, "--one", str(i), "--steps", str(args.steps),
                                      "--batch", str(args.batch), "--seq", str(args.seq), *extra],
                                     stdout=subprocess.PIPE, text=True) for i in range(len(RUNS))]
        child_train = [json.loads(c.communicate()[0].strip().splitlines()[-1])["train_s"] for c in children]
        rows.append(("8 processes sharing the device", time.perf_counter() - start, max(child_train), float("nan")))

    name = "tiny-qwen3 (CPU smoke test)" if args.tiny else f"Qwen3-0.6B architecture, {torch.cuda.get_device_name()}"
    print(f"{name}, {dtype}, 8 LoRA runs r=4/8/16/32 x qkvo/qkvogud, {args.steps} steps of {args.batch} x {args.seq} tokens each")
    print(f"{'':34}{'makespan s':>12}{'train s':>10}{'tokens/s':>12}{'peak GB':>9}")
    for label, wall, train, peak in rows:
        print(f"{label:34}{wall:12.1f}{train:10.1f}{tokens / wall:12.0f}{peak:9.1f}")
    first = rows[0]
    print(f"packed ({products[0]})"
          + (f" vs sequential: {sequential[1] / first[1]:.2f}x makespan, {sequential[2] / first[2]:.2f}x training "
             "(target >= 3x)" if sequential else "")
          + (f"; vs 8 processes: {rows[-1][1] / first[1]:.2f}x makespan" if not args.no_processes else "")
          + "".join(f"; {products[0]} vs {p}: {rows[i][2] / first[2]:.2f}x training" for i, p in enumerate(products) if i))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "steps": args.steps, "batch": args.batch, "seq": args.seq,
                                         "took": took_by_product,
                                         "rows": [dict(zip(("way", "makespan_s", "train_s", "peak_gb"),
                                                           [v if v == v else None for v in r])) for r in rows]},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
