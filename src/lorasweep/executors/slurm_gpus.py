"""The GPUs a SLURM job asks for, under the same rules as local workers.

A SLURM job trains one run (executors/slurm.SlurmRun), and SLURM gives the job its GPUs in
CUDA_VISIBLE_DEVICES, so the run has all of them: no placement is needed, but the ask must fit the
run. A job asking for more GPUs than its run uses (`gpus_per_node=4` with `gpus_per_run=1`) would
hold the others idle, queued for longer and billed for them: refused before anything is submitted.
`gpus_per_run` > 1 trains the job's run data-parallel on its GPUs, the same way as a local worker
(executors/data_parallel), so the job must ask for that many; `runs_per_gpu` > 1 is refused: one run
per job, and SLURM gives a job's GPUs to that job alone.

A job asks for GPUs with `gpus_per_node: N` or a gres `gpu`, `gpu:N` or `gpu:TYPE:N` (sbatch's
name[:type][:count], comma-separated). A gres whose GPU count cannot be read that way (shard:2,
mps:50, gpu:a100:2(S:0-1)) is passed to sbatch as it is, unchecked: sbatch says what it makes of it.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .gpus import check_gpus_per_run, check_runs_per_gpu, whole_number


def gres_gpus(gres: Any) -> int | None:
    """How many GPUs a gres string asks for; None when it asks for none or its count cannot be read."""
    if not isinstance(gres, str):
        return None
    total = None
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else "1" if len(parts) <= 2 else None
        if count is None or len(parts) > 3:  # gpu:TYPE:COUNT with a count we cannot read
            return None
        total = (total or 0) + int(count)
    return total


# The memory of the GPU types a gres names (GiB, the smaller model where a type comes in two sizes):
# what a run must fit when hydra.launcher.gpu_mem_gb does not say
GPU_GB = {"h200": 141, "h100": 80, "a100": 40, "l40s": 48, "l40": 48, "a6000": 48, "a40": 48, "a10": 24,
          "l4": 24, "v100": 16, "t4": 16, "rtx6000": 24}


def gres_gpu_mb(gres: Any) -> float | None:
    """The memory of the GPU type a gres names (gpu:a100:1 -> 40 GiB, in MiB), or None (no type, unknown)."""
    if not isinstance(gres, str):
        return None
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and not parts[1].isdigit():
            gb = GPU_GB.get(parts[1].lower())
            return gb * 1024 if gb else None
    return None


def check_job_gpus(gres: Any, gpus_per_node: Any, gpus_per_run: Any = 1, runs_per_gpu: Any = 1) -> None:
    """Raise a ConfigError (the field, its value, what is valid) unless each GPU ask of the job's
    (gpus_per_node, a gpu gres) is exactly its run's gpus_per_run."""
    gpus_per_run = check_gpus_per_run(gpus_per_run)
    runs_per_gpu = check_runs_per_gpu(runs_per_gpu)
    if runs_per_gpu > 1:
        raise ConfigError(f"hydra.launcher.runs_per_gpu={runs_per_gpu} is not supported on SLURM: each job "
                          f"trains one run on the GPU(s) SLURM gives that job alone; use 1 (default), or "
                          f"hydra/launcher=local on a GPU machine to share its GPUs between runs")
    asks = []
    if gpus_per_node is not None:
        asks.append(("gpus_per_node", gpus_per_node, whole_number(
            "hydra.launcher.gpus_per_node", gpus_per_node, "how many GPUs each SLURM job asks for (sbatch "
            "--gpus-per-node); null: none, or those of gres", default="null")))
    counted = gres_gpus(gres)
    if counted:  # gpu:0 asks for none
        asks.append(("gres", gres, counted))
    if gpus_per_run > 1 and not asks and not gres:  # its ranks would have no GPU to train on
        raise ConfigError(f"hydra.launcher.gpus_per_run={gpus_per_run} trains each run data-parallel on "
                          f"{gpus_per_run} GPUs, but the SLURM jobs ask for none; set "
                          f"hydra.launcher.gpus_per_node={gpus_per_run} (or gres=gpu:{gpus_per_run})")
    for name, value, count in asks:
        if count != gpus_per_run:
            fix = f"{gpus_per_run}" if name == "gpus_per_node" else _gres_with(str(value), gpus_per_run)
            why = (f"the other {count - gpus_per_run} would sit idle" if count > gpus_per_run
                   else f"its {gpus_per_run} data-parallel ranks need a GPU each")
            raise ConfigError(
                f"hydra.launcher.{name}={value} asks each SLURM job for {count} GPU{'s' if count != 1 else ''}, "
                f"but a job trains one run, which uses hydra.launcher.gpus_per_run={gpus_per_run}: {why}; set "
                f"hydra.launcher.{name}={fix}, or hydra.launcher.gpus_per_run={count} to train each run on "
                f"{'all ' if count > 1 else ''}{count}")


def _gres_with(gres: str, count: int) -> str:
    """The gres with its GPU count replaced: gpu:a100:4 -> gpu:a100:1."""
    items = []
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            parts = parts[:-1] if len(parts) > 1 and parts[-1].isdigit() else parts
            item = ":".join(parts + [str(count)])
        items.append(item)
    return ",".join(items)
