"""Benchmark: counting trainable parameters from configs alone (no weights), and planning sweeps.

    python bench/plan.py

Prints wall times; nothing is asserted. Targets (issue 3/8): counting a Qwen3-1.7B config under 2 s,
planning the 9-run design-card sweep under 10 s, a 100-run sweep under 10 s.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    t0 = time.perf_counter()
    from conftest import compose_config  # the project's real Hydra config
    from lorasweep.run.plan import plan_run
    imports = time.perf_counter() - t0
    cfg = compose_config(["model=qwen3-1.7b", "task=wordnet_mcq", "method=dora", "lora.proj=qkvogud",
                          "lora.r=16"])
    plan, cold = timed(lambda: plan_run(cfg))
    _, warm = timed(lambda: plan_run(cfg))
    print(f"imports (torch, transformers, peft)         {imports:6.2f} s")
    print(f"count one Qwen3-1.7B DoRA config, cold       {cold:6.2f} s  -> {plan.predicted:,} trainable")
    print(f"count it again (skeleton cached)             {warm:6.2f} s")
    for label, args in [
        ("plan the 9-run design-card sweep (process)", ["lora.r=4,8,16", "lora.proj=qk,qkvo,qvkogdu"]),
        ("plan a 100-run sweep (process)", ["lora.r=" + ",".join(map(str, range(1, 26))),
                                            "lora.proj=qk,qkvo,qvkogdu,gud"]),
    ]:
        cmd = [sys.executable, str(ROOT / "launch.py"), "-m", *args, "model=qwen3-1.7b", "task=wordnet_mcq",
               "budget=1m", "hydra/launcher=plan"]
        proc, wall = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT))
        total = [line for line in proc.stdout.splitlines() if line.startswith("total:")]
        print(f"{label:44s} {wall:6.2f} s  {total[0] if total else proc.stderr[-300:]}")


if __name__ == "__main__":
    main()
