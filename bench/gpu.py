"""GPU throughput of LoRA, DoRA and full fine-tuning on the Qwen3-0.6B architecture (random weights).

    python bench/gpu.py [--seq 2048] [--tokens 8192,16384,24576] [--steps 10] [--compile]

Runs only where CUDA is present (the `device` tool lends one to some sessions; CI has none). bf16
weights, AdamW, the adapters built by lorasweep.model.methods.prepare on the projection code `qkvogud`.
For each method and tokens-per-step it times `--steps` optimiser steps after warm-up and prints
tokens/s, peak GPU memory and model FLOPs utilisation against the card's bf16 matmul rate measured
in the same invocation (an 8192^3 product). Nothing is asserted.

FLOPs per token (PaLM's appendix B accounting, matmuls only; embedding lookups are free):
  full        6 N + 12 L T d       (forward 2N, backward 2N for inputs + 2N for weights)
  lora/dora   4 N + 6 N_a + 12 L T d   (frozen base weights need no weight gradient)
N counts every Linear weight including the LM head, N_a the adapter weights, L layers, T sequence
length, d the attention width. "6N-MFU" is also printed: the usual figure that charges LoRA for the
weight gradients it never computes, so it flatters LoRA by up to 1.5x.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lorasweep.config.spec import LoraSpec, ModelSpec, RunSpec, TaskSpec, TrainSpec  # noqa: E402
from lorasweep.model import methods  # noqa: E402
from lorasweep.model.loading import model_config  # noqa: E402
from lorasweep.model.projections import resolve_modules  # noqa: E402

DEVICE = "cuda"
MODEL = ModelSpec(name="qwen3-0.6b", family="qwen3", source="hub", id="Qwen/Qwen3-0.6B",
                  config="configs/qwen3-0.6b.json")


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    """The card's achievable bf16 matmul rate, the MFU denominator."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def build(method: str, config, rank: int, dropout: float) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    spec = RunSpec(model=MODEL, method=method,
                   lora=LoraSpec(r=rank, alpha=2.0 * rank, dropout=dropout, proj="qkvogud"),
                   task=TaskSpec(name="bench", kind="mcq", train="", eval="", test=""), train=TrainSpec())
    targets = resolve_modules(model, "qwen3", "qkvogud", config) if method != "full" else []
    # peft keeps adapters in fp32 by default, so every adapted layer would cast its bf16 input to fp32
    # and save that copy for backward: slower than full fine-tuning and more memory. bf16 throughout.
    return methods.prepare(model, spec, "causal_lm", targets).to(torch.bfloat16)


def flops_per_token(model: nn.Module, method: str, config, seq: int) -> tuple[float, float]:
    """(required FLOPs per token, the 6N convention's) for one training step."""
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and "lora_" not in name)
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    attention = 12 * config.num_hidden_layers * seq * config.num_attention_heads * config.head_dim
    six_n = 6 * (linear + adapter) + attention
    return (six_n if method == "full" else 4 * linear + 6 * adapter + attention), six_n


def time_steps(model: nn.Module, batch: int, seq: int, vocab: int, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, peak GiB) for AdamW steps on random tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    ids = torch.randint(0, vocab, (batch, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="lora,dora,full")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--tokens", default="8192,16384,24576", help="tokens per optimiser step to try")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none here (CI never has one)")
    import peft
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = True
    config = model_config(MODEL)  # the shipped config.json: no hub needed
    peak = matmul_tflops()
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | peft {peft.__version__}")
    print(f"measured bf16 matmul (8192^3): {peak:.0f} TFLOP/s  (the MFU denominator)")
    print(f"Qwen3-0.6B architecture, random weights, bf16, seq {args.seq}, r={args.rank}, "
          f"dropout {args.dropout}, proj qkvogud, {'compiled' if args.compile else 'eager'}")
    header = f"{'method':<6} {'tokens/step':>11} {'batch':>5} {'s/step':>7} {'tokens/s':>9} {'peak GiB':>8} {'MFU':>6} {'6N-MFU':>7}"
    print(header)
    rows = []
    for method in args.methods.split(","):
        started = time.perf_counter()
        model = build(method, config, args.rank, args.dropout)
        required, six_n = flops_per_token(model, method, config, args.seq)
        print(f"  ({method}: built in {time.perf_counter() - started:.0f} s)", flush=True)
        step_model = torch.compile(model) if args.compile else model
        for tokens in map(int, args.tokens.split(",")):
            batch = max(1, tokens // args.seq)
            try:
                per_step, mem = time_steps(step_model, batch, args.seq, config.vocab_size, args.steps, args.warmup)
            except torch.OutOfMemoryError:
                print(f"{method:<6} {batch * args.seq:>11} {batch:>5}  out of memory", flush=True)
                torch.cuda.empty_cache()
                break  # a larger batch will not fit either
            rate = batch * args.seq / per_step
            row = {"method": method, "tokens_per_step": batch * args.seq, "batch": batch, "s_per_step": per_step,
                   "tokens_per_s": rate, "peak_gib": mem, "mfu": rate * required / (peak * 1e12),
                   "mfu_6n": rate * six_n / (peak * 1e12), "matmul_tflops": peak, "compiled": args.compile}
            rows.append(row)
            print(f"{method:<6} {row['tokens_per_step']:>11} {batch:>5} {per_step:>7.3f} {rate:>9.0f} "
                  f"{mem:>8.1f} {row['mfu']:>6.1%} {row['mfu_6n']:>7.1%}", flush=True)
            torch.cuda.empty_cache()
        del model, step_model
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
