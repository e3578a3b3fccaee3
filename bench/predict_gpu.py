"""GPU benchmark: predicted peak GPU memory (run/predict.py, cold) against what each run measured
(`memory.peak_gpu_mb`: torch.cuda.max_memory_allocated), for LoRA, DoRA, qlora and a pack on the
Qwen3-0.6B architecture (random weights: bench/gpu_model.py). Target: within 10%. Nothing asserted.

    python bench/gpu_model.py "$HF_HOME"      # once: the random-weight checkpoint
    HF_HOME=... python bench/predict_gpu.py [OUT_DIR]

A step of bench/gpu_check.sh may call it (kept apart from that script, which others edit):
    step predict 240 python3 bench/predict_gpu.py "$LOG/predict"
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
COMMON = ["model=qwen3-0.6b", "task=wordnet_mcq", "lora.proj=qkvogud", "lora.r=16", "train.max_steps=10",
          "train.eval_steps=5", "task.max_train=80", "task.max_eval=16", "task.max_test=32"]
CASES = [("lora", ["method=lora"]), ("dora", ["method=dora"]), ("qlora", ["method=qlora"]),
         ("lora bf16 base", ["method=lora", "model.dtype=bfloat16"])]
PACK = ("pack of 3 (r=4,8,16)", ["lora.r=4", "lora.r=8", "lora.r=16"])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="predict-gpu-"))
    from conftest import compose_config
    from lorasweep.run import calibration
    from lorasweep.run.plan import plan_run
    from lorasweep.run.predict import Target, pack_cost, predict

    import torch

    gpu = torch.cuda.get_device_name(0)
    target = Target("cuda", calibration.machine_fingerprint(gpu), 1)
    errors = []
    for name, extra in CASES:
        store = out / name.replace(" ", "_")
        cfg_args = COMMON + extra + [f"results_dir={store}"]
        c = predict(plan_run(compose_config(cfg_args)), store, target)
        measured = _run(cfg_args, store)
        errors.append(_row(name, c.peak_mb, measured))
    store = out / "pack"
    runs = [COMMON + [r, f"results_dir={store}"] for r in PACK[1]]
    c = pack_cost([predict(plan_run(compose_config(a)), store, target) for a in runs])
    measured = _run(["-m", *COMMON, "lora.r=4,8,16", "hydra.launcher.pack=true", f"results_dir={store}"], store)
    errors.append(_row(PACK[0], c.peak_mb, measured))
    errors.sort()
    print(f"{gpu}: median absolute error of the predicted peak GPU memory: {errors[len(errors) // 2]:.1%} "
          f"(target 10%)")


def _run(args: list[str], store: Path) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    peaks = [json.loads(p.read_text())["memory"]["peak_gpu_mb"] for p in store.glob("*/result.json")
             if p.stat().st_mtime >= t0]
    return max(peaks)


def _row(name: str, predicted: float, measured: float) -> float:
    error = abs(predicted - measured) / measured
    print(f"{name:24s} predicted {predicted:9,.0f} MiB  measured {measured:9,.0f} MiB  error {error:6.1%}", flush=True)
    return error


if __name__ == "__main__":
    main()
