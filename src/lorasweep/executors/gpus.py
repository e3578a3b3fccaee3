"""Which GPUs this machine's local workers may use, and which worker gets which.

Each local worker is pinned to its own GPU by the CUDA_VISIBLE_DEVICES its process starts with
(executors/worker.serve sets it before torch initialises CUDA), so that its run's cuda:0 is that
GPU. `hydra.launcher.runs_per_gpu=K` lets K workers share one GPU (small runs);
`hydra.launcher.n_jobs` (null: one worker per GPU slot, or 1 on a machine without GPUs) may not
exceed the slots, or runs would share a GPU nobody asked them to share. `hydra.launcher.gpus_per_run=N`
gives each worker N GPUs (a slot of N), on which its run trains data-parallel with N ranks
(lorasweep.executors.data_parallel); it needs at least N GPUs here.

The GPUs come from one place, `visible_gpus()`: a CUDA_VISIBLE_DEVICES the user set picks among
them (its ids are passed on as written: "2,3" gives workers 2 and 3, never others; "" or "-1"
means no GPU); how many exist comes from `nvidia-smi -L` (`gpu_count`: the driver imports no torch
for this; tests replace it to pretend GPUs, tests/hooks/fake_gpus.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand to its workers, as CUDA_VISIBLE_DEVICES values; [] for none."""
    env = os.environ if environ is None else environ
    count = gpu_count()
    if count == 0:
        return []
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    ids = []
    for part in listed.split(","):
        part = part.strip()
        if not part or part.startswith("-"):  # CUDA stops at the first invalid id: "" and "-1" hide all
            break
        ids.append(part)
    return ids


def gpu_count() -> int:
    """How many GPUs this machine has, as nvidia-smi lists them (0 without nvidia-smi or a working driver)."""
    out = _smi("-L")
    return 0 if out is None else sum(line.startswith("GPU ") for line in out.splitlines())  # MIG lines are indented


def gpu_memory_mb() -> float | None:
    """The memory of this machine's smallest GPU in MiB, as nvidia-smi reports it (None without one):
    what a run placed on any of them must fit in (tests pretend one, tests/hooks/fake_gpus.py)."""
    out = _smi("--query-gpu=memory.total", "--format=csv,noheader,nounits")
    try:
        sizes = [float(line) for line in (out or "").split() if line.strip()]
    except ValueError:
        return None
    return min(sizes) if sizes else None


def gpu_name() -> str | None:
    """The first GPU's name as nvidia-smi reports it (torch reports the same one), or None."""
    out = _smi("--query-gpu=name", "--format=csv,noheader")
    return out.splitlines()[0].strip() if out and out.strip() else None


def _smi(*args: str) -> str | None:
    """nvidia-smi's output for `args`, or None: no nvidia-smi, or a broken driver (as if there were no GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_slots(gpus: Sequence[str], gpus_per_run: int = 1, runs_per_gpu: int = 1) -> list[str]:
    """Each worker slot's CUDA_VISIBLE_DEVICES: the GPUs in groups of `gpus_per_run`, each group
    `runs_per_gpu` times, round-robin, so that fewer workers than slots still spread over the GPUs."""
    groups = [",".join(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
    return [group for _ in range(runs_per_gpu) for group in groups]


def check_gpus_per_run(value: Any) -> int:
    """hydra.launcher.gpus_per_run, the same rule for local workers and SLURM jobs: a whole number;
    more than 1 trains each run data-parallel on that many GPUs (executors/data_parallel)."""
    return whole_number("hydra.launcher.gpus_per_run", value, "how many GPUs each run gets (more than 1: "
                        "data parallel, one rank a GPU)")


def check_runs_per_gpu(value: Any) -> int:
    """hydra.launcher.runs_per_gpu, the same rule wherever it is taken: a whole number of runs that
    share one GPU."""
    return whole_number("hydra.launcher.runs_per_gpu", value, "how many runs share one GPU")


def place_workers(n_jobs: Any, runs_per_gpu: Any = 1, gpus_per_run: Any = 1, gpus: Sequence[str] | None = None,
                  n_jobs_field: str = "hydra.launcher.n_jobs") -> tuple[int, list[str] | None]:
    """(how many workers, each one's CUDA_VISIBLE_DEVICES, or None on a machine without GPUs: no
    pinning, as before). Every value is checked first: a ConfigError names the field, the value
    and what is valid."""
    runs_per_gpu = check_runs_per_gpu(runs_per_gpu)
    gpus_per_run = check_gpus_per_run(gpus_per_run)
    if n_jobs is not None:
        n_jobs = whole_number(n_jobs_field, n_jobs, "how many runs are in flight at once; null: one per GPU slot, "
                        "or 1 without a GPU", default="null")
    gpus = visible_gpus() if gpus is None else list(gpus)
    if gpus_per_run > max(1, len(gpus)):  # a CPU trains one rank: no data parallel without GPUs to split over
        have = f"only {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({','.join(gpus)})" if gpus else "no GPU"
        raise ConfigError(f"hydra.launcher.gpus_per_run={gpus_per_run} needs {gpus_per_run} GPUs for each run, "
                          f"and this machine has {have} (nvidia-smi, CUDA_VISIBLE_DEVICES); use "
                          f"{max(1, len(gpus))}{' or less' if len(gpus) > 1 else ''}")
    if not gpus:
        return n_jobs or 1, None
    slots = gpu_slots(gpus, gpus_per_run, runs_per_gpu)
    if n_jobs is None:
        n_jobs = len(slots)
    if n_jobs > len(slots):
        raise ConfigError(
            f"{n_jobs_field}={n_jobs} is more than this machine's {len(slots)} GPU slot"
            f"{'s' if len(slots) != 1 else ''} ({len(gpus)} GPU{'s' if len(gpus) != 1 else ''} "
            f"{','.join(gpus)} x hydra.launcher.runs_per_gpu={runs_per_gpu}): runs would share a GPU unasked; "
            f"set {n_jobs_field} to {len(slots)} or less, or hydra.launcher.runs_per_gpu="
            f"{-(-n_jobs // len(gpus))} to share each GPU between that many runs")
    return n_jobs, slots[:n_jobs]


def whole_number(field: str, value: Any, meaning: str, minimum: int = 1, default: str = "1") -> int:
    """A launcher setting that is a whole number of at least `minimum` (2.0 is 2; n_jobs, retries,
    runs_per_gpu, ...), checked one way by every driver, else a ConfigError naming the field, the
    value, what it means and what is valid."""
    if isinstance(value, float) and value.is_integer():  # retries=2.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field}={value!r} is invalid: it is {meaning}, a whole number {minimum} or more "
                          f"(default {default})")
    return value
