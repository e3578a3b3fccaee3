"""A sweep's predicted cost: each run's (run/predict.py) for where the launcher will train it, packs
of runs, and the whole sweep's wall time for its runs in flight.

- Where: a local sweep trains on this machine (its GPUs if it has some: the GPU's memory is what must
  fit), each run on the usable cores split between the n_jobs runs; a SLURM sweep's jobs train on a
  node the plan does not know yet (`machine` None: calibrated on the store's runs on any machine),
  on a GPU if they ask for one, with cpus_per_task threads.
- A pack: run/predict.pack_cost.
- The sweep's wall time: its units (runs or packs) handed out longest first to n_jobs slots, as a
  driver that keeps n_jobs in flight ends up doing.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # run/plan imports torch: a sweep checks its configs before that loads
    from ..run.cost import Cost
    from ..run.plan import Plan


@dataclass(frozen=True)
class Where:
    """Where a launcher trains its runs, as the plan sees it."""

    device: str = "cpu"
    machine: str | None = None
    threads: int = 1
    n_jobs: int = 1                  # runs (or packs) in flight
    gpu_mb: float | None = None      # the memory of the GPU each run gets (None: not known here)


def run_cost(plan: Plan, store: Path, where: Where) -> Cost | None:
    """The run's predicted cost, or None where it cannot be predicted (its tokenizer cannot be had)."""
    from ..run.predict import Target, predict

    try:
        return predict(plan, store, Target(where.device, where.machine, where.threads))
    except Exception:  # a prediction is a look: a model it cannot read costs the plan nothing else
        return None


def wall_seconds(durations: Sequence[float], n_jobs: int) -> float:
    """The wall time of units of `durations`, longest first, n_jobs at a time."""
    slots = [0.0] * max(1, min(n_jobs, len(durations) or 1))
    for d in sorted(durations, reverse=True):
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return max(slots)


def local_where(n_jobs: int, threads: int | None = None) -> Where:
    """Where the local launcher trains: this machine, on its GPUs if it has some (each run its own)."""
    from ..executors import gpus
    from ..executors.local import threads_per_run
    from ..run.calibration import machine_fingerprint

    visible = gpus.visible_gpus()
    gpu = gpus.gpu_name() if visible else None
    return Where("cuda" if visible else "cpu", machine_fingerprint(gpu), threads_per_run(n_jobs, threads), n_jobs,
                 gpus.gpu_memory_mb() if visible else None)


def slurm_where(settings) -> Where:
    """Where SLURM jobs train (executors/slurm.SlurmSettings): a GPU if they ask for one, on a node
    not known yet; array_parallelism jobs at once."""
    target = settings.target()
    return Where(target.device, None, target.threads, settings.array_parallelism, settings.gpu_mb())


def too_big(cfgs: Sequence[tuple[str, dict]], where: Where) -> list[str]:
    """"<label>: predicted peak GPU memory ... does not fit ...; predicted to fit with ..." for each
    run (label, its config) predicted not to fit its GPU's memory; [] where that memory is not known."""
    from ..run.plan import plan_run
    from ..run.predict import Target, fit_problem
    from ..run.store import store_dir

    if where.device != "cuda" or not where.gpu_mb:
        return []
    gpu = f"the GPU{' (' + where.machine.split(' / ')[-1] + ')' if where.machine and ' / ' in where.machine else ''}"
    problems = []
    for label, cfg in cfgs:
        problem = fit_problem(plan_run(cfg), store_dir(cfg), Target(where.device, where.machine, where.threads),
                              where.gpu_mb, gpu)
        if problem:
            problems.append(f"{label or '(defaults)'}: {problem}")
    return problems
