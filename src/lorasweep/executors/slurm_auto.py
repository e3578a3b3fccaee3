"""`timeout_min: auto` and `mem_gb: auto`: what a SLURM job asks for, from its run's predicted cost.

Each job's runs (one, or a pack's) are planned again from their configs (no weight read) and
predicted (run/predict.py) for where the job trains: a GPU if it asks for one, else cpus_per_task
CPU threads, on whatever node SLURM picks (calibrated on the store's runs of any machine of that
device). The ask is the prediction plus a stated margin (`time_margin`, `mem_margin`); the jobs of
one array share their sbatch settings, so an array asks for the largest of its jobs'. A job's time
also covers its interpreter's start and its imports (START_MIN), which a run's timing does not.
On a GPU the memory SLURM is asked for is the host's: the run's process without its model (the
model lives on the GPU) plus the weights it loads first on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError
from .job import Job

AUTO = "auto"
START_MIN = 5        # minutes for the job's interpreter, imports and planning before its run's clock starts
MIN_MEM_GB = 1.0


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def check_auto(field: str, value: Any, meaning: str) -> None:
    """A launcher setting that is a number, null or "auto": else a ConfigError naming it."""
    if value is None or is_auto(value) or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return
    raise ConfigError(f"hydra.launcher.{field}={value!r} is invalid: it is {meaning}; a positive number, or auto "
                      f"(the run's predicted cost plus hydra.launcher.{'time' if 'time' in field else 'mem'}_margin)")


@dataclass(frozen=True)
class Requests:
    time_min: int | None       # sbatch --time, minutes (None: not auto)
    mem_mb: int | None         # sbatch --mem, MiB (None: not auto)
    note: str                  # what was asked and why, said when the array is submitted


def job_cost(job: Job, target):
    """The predicted cost (run/cost.Cost) of one SLURM job, its run's or its pack's, for `target`
    (run/predict.Target). Imports torch: called only where a prediction is asked for."""
    from ..run.plan import plan_run
    from ..run.predict import pack_cost, predict
    from ..run.store import store_dir

    costs = [predict(plan_run(cfg), store_dir(cfg), target) for cfg in job.configs]
    return costs[0] if len(costs) == 1 else pack_cost(costs)


def requests(jobs: Sequence[Job], target, auto_time: bool, auto_mem: bool, time_margin: float,
             mem_margin: float) -> Requests:
    """What an array of `jobs` asks for: the largest prediction of its jobs plus the margins."""
    from ..run.calibration import COLD

    costs = [job_cost(job, target) for job in jobs]
    time_min = mem_mb = None
    said = []
    if auto_time:
        longest = max(c.total_s for c in costs)
        time_min = START_MIN + math.ceil(longest * (1 + time_margin) / 60)
        said.append(f"timeout_min={time_min} (predicted {longest / 60:.1f} min + {time_margin:.0%}, "
                    f"+{START_MIN} min to start)")
    if auto_mem:
        host = [c.peak_mb if c.device == "cpu" else COLD["cpu"]["runtime_mb"] + c.work.load_mb for c in costs]
        largest = max(host)
        mem_mb = int(max(MIN_MEM_GB * 1024, math.ceil(largest * (1 + mem_margin))))
        said.append(f"mem={mem_mb}M (predicted {largest:,.0f} MiB{' host' if target.device != 'cpu' else ''}"
                    f" + {mem_margin:.0%})")
    basis = costs[0].basis
    return Requests(time_min, mem_mb, f"{', '.join(said)}; {basis}")
