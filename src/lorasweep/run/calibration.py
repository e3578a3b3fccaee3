"""How fast a machine does a run's work (run/cost.py), from the results store's finished runs.

Each finished run records its work (`cost.work`: FLOPs, the memory its model needs) beside what it
measured (`timing`, `memory`) and the machine it ran on (`env.machine`: the CPU's model and count,
the GPU's name; the same for every node of a cluster's partition). A run on this machine is then
predicted at the rates its finished runs had: the same model's first (they share their runtime's
memory and their kernels' efficiency), other models' next. With none, the prediction is cold: the
rounded rates of the development machine below, said as such, with a wide error.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .cost import Work

# Cold rates, rounded from this project's runs: smollm2-4l on 2 CPU threads trains at ~80 GFLOP/s a
# thread and evaluates (no gradients, batches of 64) at ~3x that; a training process holds ~800 MB
# beyond its model's work (torch, transformers, peft, trl and datasets imported: ~490 MB; the
# Trainer, the encoded data, the allocator's arenas). A GPU's are a fraction of its peak, for fp32
# weights under bf16 autocast.
# A run's setup (its data tokenized, its Trainer built, its adapter saved: timing's total_s beyond
# its load, training and evaluations) takes a few seconds either way.
COLD = {"cpu": {"flops": 80e9, "eval_flops": 250e9, "runtime_mb": 800.0, "load_s": 0.5, "setup_s": 4.0},
        "cuda": {"flops": 20e12, "eval_flops": 20e12, "runtime_mb": 50.0, "load_s": 3.0, "setup_s": 4.0}}  # allocated: no CUDA context
COLD_ERROR = (0.5, 0.3)                 # time, memory: a cold prediction is a rough one
SAME_MODEL_ERROR = (0.15, 0.10)         # the targets, met on this project's bench (bench/predict.py)
OTHER_MODEL_ERROR = (0.3, 0.2)


def machine_fingerprint(gpu: str | None = None) -> str:
    """This machine as calibration matches it: the CPU's model and logical count, and the GPU a run
    uses ("Intel(R) Xeon(R) ... x2" or "... x16 / NVIDIA H100 80GB HBM3"). Not the host name: the
    nodes of a partition are one machine here."""
    cpu = cpu_model()
    return f"{cpu} x{os.cpu_count()}" + (f" / {gpu}" if gpu and gpu != "cpu" else "")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Rates:
    """A machine's rates for one run: per thread on a CPU (a run's threads share the cores)."""

    flops: float               # training FLOPs a second (a thread's, on a CPU)
    eval_flops: float
    runtime_mb: float          # peak memory beyond the model's work: the process's runtime
    load_s: float              # loading and adapting the model
    setup_s: float             # the rest of a run beyond its load, training and evaluations
    basis: str                 # what the rates come from, said in the plan
    time_error: float
    memory_error: float
    calibrated: bool = False


def cold(device: str) -> Rates:
    c = COLD[device]
    return Rates(c["flops"], c["eval_flops"], c["runtime_mb"], c["load_s"], c["setup_s"], "cold (no finished run on this machine)",
                 *COLD_ERROR)


def rates(store: Path, model: str, device: str, machine: str | None) -> Rates:
    """The rates of the finished runs in `store` on `machine` (None: any; a SLURM sweep's jobs run
    elsewhere) with `device`: of model `model` if there are some, else of any model; else cold."""
    refs = [r for r in finished(str(Path(store).resolve())) if r["device"] == device
            and (machine is None or r["machine"] == machine)]
    same = [r for r in refs if r["model"] == model]
    if same:
        return _from(same, f"calibrated on {len(same)} finished run{'s' if len(same) > 1 else ''} of {model} "
                           f"on this machine", SAME_MODEL_ERROR)
    if refs:
        return _from(refs, f"calibrated on {len(refs)} finished run{'s' if len(refs) > 1 else ''} of other models "
                           f"on this machine", OTHER_MODEL_ERROR)
    return cold(device)


def _from(refs: list[dict], basis: str, errors: tuple[float, float]) -> Rates:
    train = [r["train_rate"] for r in refs if r["train_rate"]]
    evals = [r["eval_rate"] for r in refs if r["eval_rate"]]
    base = cold(refs[0]["device"])
    spread = _spread(train)  # runs of one model that disagree among themselves: say so
    return Rates(statistics.median(train) if train else base.flops,
                 statistics.median(evals) if evals else base.eval_flops,
                 statistics.median(r["runtime_mb"] for r in refs),
                 statistics.median(r["load_s"] for r in refs),
                 statistics.median(r["setup_s"] for r in refs), basis,
                 max(errors[0], spread), errors[1], calibrated=True)


def _spread(values: list[float]) -> float:
    if len(values) < 3:
        return 0.0
    mid = statistics.median(values)
    return statistics.median(abs(v - mid) / mid for v in values)


_READ: dict[Path, tuple[float, dict | None]] = {}  # result.json -> (its mtime, its reference): each read once


def finished(store: str) -> tuple[dict, ...]:
    """What calibration needs of each finished run in the store that recorded its work. A plan asks
    for many runs, and a worker for each of its runs: each result.json is read again only once it
    has changed."""
    out = []
    root = Path(store)
    if not root.is_dir():
        return ()
    for path in root.glob("*/result.json"):
        try:
            mtime = path.stat().st_mtime
            if path not in _READ or _READ[path][0] != mtime:
                _READ[path] = (mtime, reference(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
        if _READ[path][1] is not None:
            out.append(_READ[path][1])
    return tuple(out)


def reference(result: dict) -> dict | None:
    """A done run's rates, or None: not done, no work recorded (a run of an earlier version), or a
    packed run (its timing and peak memory are its pack's, shared with the pack's other runs)."""
    w = (result.get("cost") or {}).get("work")
    timing, memory, env = result.get("timing") or {}, result.get("memory") or {}, result.get("env") or {}
    if result.get("status") != "done" or not w or not timing.get("train_s") or result.get("pack"):
        return None
    device = w["device"]
    threads = max(1, int(env.get("threads") or 1)) if device == "cpu" else 1
    peak = memory.get("peak_rss_mb") if device == "cpu" else memory.get("peak_gpu_mb")
    eval_s = (timing.get("train_eval_s") or 0) + (timing.get("eval_s") or 0)
    load_s = timing.get("load_s") or 0.0
    setup_s = max(0.0, (timing.get("total_s") or 0.0) - load_s - timing["train_s"] - eval_s)
    try:
        model_mb = Work(**w).model_mb()
    except TypeError:  # a record of another version's fields
        return None
    return {"model": (result.get("config") or {}).get("model", {}).get("name"), "device": device,
            "machine": env.get("machine"),
            "train_rate": w["train_flops"] / timing["train_s"] / threads,
            "eval_rate": (w["eval_flops"] + w["test_flops"]) / eval_s / threads if eval_s > 0 else None,
            "runtime_mb": (peak or 0) - model_mb, "load_s": load_s, "setup_s": setup_s}
