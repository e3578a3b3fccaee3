"""GPU throughput of LoRA, DoRA and full fine-tuning on the Qwen3-0.6B architecture (random weights).

    python bench/gpu.py [--seq 2048] [--tokens 8192,16384,24576] [--steps 10] [--compile] [--loss hf,kept]
                        [--adapters bf16,fp32]
    python bench/gpu.py --tiny --seq 32 --tokens 64 --steps 2     # a smoke test on the CPU

Runs where CUDA is present (the `device` tool lends one to some sessions; CI has none). bf16
weights, AdamW, the adapters built by lorasweep.model.methods.prepare on the projection code `qkvogud`.
For each method, LM-head loss and tokens-per-step it times `--steps` optimiser steps after warm-up
and prints tokens/s, peak GPU memory and model FLOPs utilisation against the card's bf16 matmul rate
measured in the same invocation (an 8192^3 product). Nothing is asserted.

The LM-head loss (`--loss`), the step the 151,936-token vocabulary makes expensive:
  hf     the model's own loss (`labels=`): fp32 logits for every position and the whole vocabulary
  kept   lorasweep's SFT loss (run/lm_head.kept_rows_loss): the head on the rows that carry loss
         only (all of them here: random tokens train on every position), through trl's chunked
         log-prob kernel, so no whole-vocabulary fp32 logits exist at once
  liger  Liger Kernel's fused linear cross-entropy, where `pip install liger-kernel` put it (Triton)

The adapters' dtype (`--adapters`), on the bf16 base:
  bf16   the adapters cast to bf16 with the base: one dtype throughout (AdamW steps bf16 weights)
  fp32   peft's float32 adapters under bf16 autocast, as lorasweep trains with model.dtype=bfloat16
         on a GPU: the matmuls in bf16, the adapter weights and their updates in float32

FLOPs per token (PaLM's appendix B accounting, matmuls only; embedding lookups are free):
  full        6 N + 12 L T d       (forward 2N, backward 2N for inputs + 2N for weights)
  lora/dora   4 N + 6 N_a + 12 L T d   (frozen base weights need no weight gradient)
N counts every Linear weight including the LM head, N_a the adapter weights, L layers, T sequence
length, d the attention width. "6N-MFU" is also printed: the usual figure that charges LoRA for the
weight gradients it never computes, so it flatters LoRA by up to 1.5x.
"""
from __future__ import annotations

import argparse
import importlib.util
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
from lorasweep.model.loading import model_config, tiny_config  # noqa: E402
from lorasweep.model.projections import resolve_modules  # noqa: E402

from lorasweep.run import lm_head  # noqa: E402

MODEL = ModelSpec(name="qwen3-0.6b", family="qwen3", source="hub", id="Qwen/Qwen3-0.6B",
                  config="configs/qwen3-0.6b.json")
TINY = ModelSpec(name="tiny-qwen3", family="qwen3", source="tiny")
LOSSES = ("hf", "kept", "liger")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """The device's achievable matmul rate in the bench's dtype, the MFU denominator."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def build(method: str, spec_model: ModelSpec, config, rank: int, dropout: float, device: str,
          dtype: torch.dtype, adapters: str = "bf16") -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    spec = RunSpec(model=spec_model, method=method,
                   lora=LoraSpec(r=rank, alpha=2.0 * rank, dropout=dropout, proj="qkvogud"),
                   task=TaskSpec(name="bench", kind="mcq", train="", eval="", test=""), train=TrainSpec())
    targets = resolve_modules(model, "qwen3", "qkvogud", config) if method != "full" else []
    # peft keeps adapters in fp32 by default; without autocast every adapted layer would cast its bf16
    # input to fp32 and save that copy for backward (slower than full fine-tuning, more memory): so
    # either bf16 throughout, or fp32 adapters under autocast (loss_function)
    model = methods.prepare(model, spec, "causal_lm", targets).to(dtype)
    if adapters == "fp32" and method != "full":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def loss_function(name: str, model: nn.Module, compile_: bool, autocast: bool = False):
    """ids -> the training loss of `ids` under LM-head loss `name` (see the docstring); `compile_`
    compiles what runs under the loss: the whole model (hf), or its decoder (kept, liger), as
    train.compile does; `autocast` runs it under CUDA's bf16 autocast (fp32 adapters)."""
    if autocast:
        inner = loss_function(name, model, compile_)

        def autocast_loss(ids):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return inner(ids)
        return autocast_loss
    if name == "hf":
        step_model = torch.compile(model) if compile_ else model
        return lambda ids: step_model(input_ids=ids, labels=ids).loss
    body = torch.compile(lm_head.backbone(model)) if compile_ else lm_head.backbone(model)
    if name == "kept":
        return lambda ids: lm_head.kept_rows_loss(model, {"input_ids": ids, "labels": ids}, body=body).loss
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused, head = LigerFusedLinearCrossEntropyLoss(), model.get_output_embeddings()

    def liger(ids):
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
        return fused(head.weight, hidden.reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1))
    return liger


def flops_per_token(model: nn.Module, method: str, config, seq: int) -> tuple[float, float]:
    """(required FLOPs per token, the 6N convention's) for one training step."""
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and "lora_" not in name)
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    attention = 12 * config.num_hidden_layers * seq * config.num_attention_heads * config.head_dim
    six_n = 6 * (linear + adapter) + attention
    return (six_n if method == "full" else 4 * linear + 6 * adapter + attention), six_n



def time_steps(model: nn.Module, loss_of, batch: int, seq: int, vocab: int, steps: int, warmup: int,
               device: str) -> tuple[float, float, float]:
    """(seconds per step, peak GiB, the last step's loss) for AdamW steps on random tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, vocab, (batch, seq), device=device, generator=torch.Generator(device).manual_seed(0))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        loss = loss_of(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return (time.perf_counter() - start) / steps, peak, loss.item()


def setting(args) -> tuple[str, torch.dtype, ModelSpec, object]:
    """(device, dtype, model spec, model config) for this invocation."""
    if args.tiny:
        return "cpu", torch.float32, TINY, tiny_config(TINY)
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (or --tiny for a CPU smoke test); none here (CI never has one)")
    torch.backends.cuda.matmul.allow_tf32 = True
    return "cuda", torch.bfloat16, MODEL, model_config(MODEL)  # the shipped config.json: no hub needed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="lora,dora,full")
    ap.add_argument("--loss", default="hf,kept", help=f"LM-head losses to time, of {','.join(LOSSES)}")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--tokens", default="8192,16384,24576", help="tokens per optimiser step to try")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    ap.add_argument("--adapters", default="bf16", help="the adapters' dtypes to time, of bf16,fp32")
    ap.add_argument("--tiny", action="store_true", help="tiny random Qwen3 in fp32 on the CPU: a smoke test")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    losses = args.loss.split(",")
    if unknown := [x for x in losses if x not in LOSSES]:
        sys.exit(f"--loss {args.loss}: unknown {','.join(unknown)}; valid: {','.join(LOSSES)}")
    if "liger" in losses and importlib.util.find_spec("liger_kernel") is None:
        print("(--loss liger skipped: pip install liger-kernel to time it)")
        losses.remove("liger")
    import peft
    import transformers

    device, dtype, spec_model, config = setting(args)
    peak = matmul_tflops(device, dtype, n=1024 if args.tiny else 8192)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | peft {peft.__version__}")
    print(f"measured {str(dtype).removeprefix('torch.')} matmul: {peak:.3g} TFLOP/s  (the MFU denominator)")
    print(f"{spec_model.name} architecture, random weights, {str(dtype).removeprefix('torch.')}, seq {args.seq}, "
          f"r={args.rank}, dropout {args.dropout}, proj qkvogud, {'compiled' if args.compile else 'eager'}")
    print(f"{'method':<6} {'loss':<5} {'adapt':<5} {'tokens/step':>11} {'batch':>5} {'s/step':>7} {'tokens/s':>9} "
          f"{'peak GiB':>8} {'MFU':>6} {'6N-MFU':>7} {'last loss':>9}")
    rows = []
    settings = [(m, loss, a) for m in args.methods.split(",") for loss in losses
                for a in (args.adapters.split(",") if m != "full" else ["bf16"])]
    for method, loss, adapters in settings:  # each from the same initial model: their last losses compare
        started = time.perf_counter()
        model = build(method, spec_model, config, args.rank, args.dropout, device, dtype, adapters)
        required, six_n = flops_per_token(model, method, config, args.seq)
        print(f"  ({method}: built in {time.perf_counter() - started:.0f} s)", flush=True)
        loss_of = loss_function(loss, model, args.compile, autocast=adapters == "fp32" and device == "cuda")
        for tokens in map(int, args.tokens.split(",")):
            batch = max(1, tokens // args.seq)
            try:
                per_step, mem, last = time_steps(model, loss_of, batch, args.seq, config.vocab_size,
                                                 args.steps, args.warmup, device)
            except torch.OutOfMemoryError:
                print(f"{method:<6} {loss:<5} {adapters:<5} {batch * args.seq:>11} {batch:>5}  out of memory",
                      flush=True)
                torch.cuda.empty_cache()
                break  # a larger batch will not fit either
            rate = batch * args.seq / per_step
            row = {"method": method, "loss": loss, "adapters": adapters, "tokens_per_step": batch * args.seq,
                   "batch": batch, "s_per_step": per_step, "tokens_per_s": rate, "peak_gib": mem,
                   "mfu": rate * required / (peak * 1e12), "mfu_6n": rate * six_n / (peak * 1e12),
                   "matmul_tflops": peak, "compiled": args.compile, "last_loss": last, "device": name}
            rows.append(row)
            print(f"{method:<6} {loss:<5} {adapters:<5} {row['tokens_per_step']:>11} {batch:>5} {per_step:>7.3f} "
                  f"{rate:>9.0f} {mem:>8.1f} {row['mfu']:>6.1%} {row['mfu_6n']:>7.1%} {last:>9.4f}", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        del model, loss_of
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
