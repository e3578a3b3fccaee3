"""A run's progress while it trains: `progress.json` in its folder, for anyone to look at.

A sweep on SLURM, or one whose terminal was closed, can be seen only through its files; the plan
view (hydra/launcher=plan) reads this one. The training loop's ProgressFile callback writes it
(run/progress_file.py):

    step, total_steps          optimizer steps done and planned
    train_loss                 the last logged training loss: {value, step}
    eval                       the last evaluation: {metric, value, step}
    host, pid, slurm_job, gpu  who trains it: the CUDA device's name, else "cpu"
    cuda_visible_devices       the GPUs its process was given (executors/gpus, or SLURM); None: not set
    peak_gpu_mb                the most GPU memory it has held so far (MiB; None without a GPU)
    started_at, updated_at     ISO 8601, local time with its offset
    steps_per_s, eta_s         the step rate since training began (evaluations included: it is the
                               wall clock a person waits on) and the seconds left at that rate
    predicted_s                the seconds its training (evaluations included) was predicted to take
                               (run/predict.py), for comparing with the rate measured; None: no prediction

It is a look, never the truth. When the run ends (done, failed, diverged, pruned) its result.json
says how, and the progress file stays behind, superseded. Nor does it say that the run is running:
only a live claim (run/claims.py) does; a progress file without one was left by a run that stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..console import duration

PROGRESS_FILE = "progress.json"


def versus_prediction(elapsed_s: float, eta_s: float | None, predicted_s: float | None) -> str:
    """"12% slower than predicted (2m30s)": training's time at the rate measured so far (elapsed and
    left) against its prediction; "" without either."""
    if eta_s is None or not predicted_s or elapsed_s <= 0:
        return ""
    factor = (elapsed_s + eta_s) / predicted_s
    predicted = duration(predicted_s) if predicted_s >= 1 else "under 1s"
    if abs(factor - 1) < 0.05:
        return f"as predicted ({predicted})"
    if factor >= 10 or factor <= 0.1:  # a cold prediction for a tiny model: a factor, not "8366%"
        how = f"{factor:.0f}x slower" if factor > 1 else f"{1 / factor:.0f}x faster"
        return f"{how} than predicted ({predicted})"
    return f"{abs(factor - 1):.0%} {'slower' if factor > 1 else 'faster'} than predicted ({predicted})"


def eta_seconds(elapsed_s: float, steps_done: int, steps_left: int) -> float | None:
    """Seconds left for `steps_left` more steps at the rate of the `steps_done` in `elapsed_s`;
    None before the first step (no rate yet)."""
    if steps_done <= 0 or elapsed_s <= 0:
        return None
    return max(0, steps_left) * elapsed_s / steps_done


@dataclass(frozen=True)
class Progress:
    """A progress.json as read back: the fields above, `modified` the file's mtime (epoch seconds)."""

    step: int
    total_steps: int
    modified: float
    data: dict[str, Any]

    def eta_now(self, now: float | None = None) -> float | None:
        """The ETA counted down from when it was written: seconds left now, at least 0."""
        eta = self.data.get("eta_s")
        if not isinstance(eta, (int, float)):
            return None
        return max(0.0, eta - max(0.0, (now or time.time()) - self.updated))

    @property
    def updated(self) -> float:
        """When it was written (epoch seconds): its updated_at, else the file's mtime."""
        try:
            return datetime.fromisoformat(self.data["updated_at"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return self.modified


def read_progress(folder: Path) -> Progress | None:
    """The run's progress.json, or None: none there, or not one (a look, so a bad file is no progress)."""
    path = Path(folder) / PROGRESS_FILE
    try:
        modified = path.stat().st_mtime
        data = json.loads(path.read_text())
        return Progress(int(data["step"]), int(data["total_steps"]), modified, data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
