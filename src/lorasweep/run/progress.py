"""A run's progress while it trains: `progress.json` in its folder, for anyone to look at.

A sweep on SLURM, or one whose terminal was closed, can be seen only through its files; the plan
view (hydra/launcher=plan) reads this one. The training loop's ProgressFile callback writes it
(atomically, run/store.write_json_atomically) when training begins, after its first step (the first
rate), then at most every WRITE_EVERY_S after a step, at each evaluation and when training ends:

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
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..console import duration
from ..errors import StoreError
from .store import peak_memory, slurm_job_id, write_json_atomically

PROGRESS_FILE = "progress.json"
# A write is a temp file, an fsync and a rename: every 5 s is nothing beside a training step, and
# fresh enough for a person looking at a sweep (the plan view's ETA counts down from updated_at).
WRITE_EVERY_S = 5.0
EVAL_METRICS = ("accuracy", "token_accuracy", "exact_match", "loss")  # the first one an evaluation has is shown


def versus_prediction(elapsed_s: float, eta_s: float | None, predicted_s: float | None) -> str:
    """"12% slower than predicted (2m30s)": training's time at the rate measured so far (elapsed and
    left) against its prediction; "" without either."""
    if eta_s is None or not predicted_s or elapsed_s <= 0:
        return ""
    ratio = (elapsed_s + eta_s) / predicted_s - 1
    if abs(ratio) < 0.05:
        return f"as predicted ({duration(predicted_s)})"
    return f"{abs(ratio):.0%} {'slower' if ratio > 0 else 'faster'} than predicted ({duration(predicted_s)})"


def eta_seconds(elapsed_s: float, steps_done: int, steps_left: int) -> float | None:
    """Seconds left for `steps_left` more steps at the rate of the `steps_done` in `elapsed_s`;
    None before the first step (no rate yet)."""
    if steps_done <= 0 or elapsed_s <= 0:
        return None
    return max(0, steps_left) * elapsed_s / steps_done


class ProgressFile(TrainerCallback):
    """Keeps `path` (the run's progress.json) up to date while the Trainer trains."""

    def __init__(self, path: Path, every_s: float = WRITE_EVERY_S, predicted_s: float | None = None):
        self.path, self.every_s, self.predicted_s = Path(path), every_s, predicted_s
        self.who = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id(), "gpu": _device(),
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self.loss: dict[str, Any] | None = None
        self.eval: dict[str, Any] | None = None  # the evaluation before training (step 0) counts too
        self.started_at = ""
        self._begin: tuple[float, int] | None = None  # (monotonic time, step) when this train() began
        self._written = -math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self._begin = (time.monotonic(), state.global_step)  # a resumed run begins at its checkpoint's step
        if self.predicted_s and state.global_step and state.max_steps:  # resumed: the steps left are predicted
            self.predicted_s *= max(0, state.max_steps - state.global_step) / state.max_steps
        self.started_at = _now()
        self._write(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = {"value": logs["loss"], "step": state.global_step}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        name = next((m for m in EVAL_METRICS if f"eval_{m}" in metrics), None)
        if name is not None:
            self.eval = {"metric": name, "value": metrics[f"eval_{name}"], "step": state.global_step}
        if self._begin is not None:
            self._write(state)

    def on_step_end(self, args, state, control, **kwargs):
        first = self._begin is not None and state.global_step == self._begin[1] + 1  # the first rate, at once
        if first or time.monotonic() - self._written >= self.every_s:
            self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state)

    def _write(self, state) -> None:
        if self._begin is None:
            return
        began, first_step = self._begin
        step, total = state.global_step, state.max_steps
        elapsed = time.monotonic() - began
        eta = eta_seconds(elapsed, step - first_step, total - step)
        record = {"step": step, "total_steps": total, "train_loss": self.loss, "eval": self.eval, **self.who,
                  "started_at": self.started_at, "updated_at": _now(),
                  "steps_per_s": round((step - first_step) / elapsed, 4) if elapsed > 0 else None,
                  "eta_s": 0.0 if step >= total else (round(eta, 1) if eta is not None else None),
                  "peak_gpu_mb": peak_memory()["peak_gpu_mb"],  # the plan view's peak GPU memory while it runs
                  "predicted_s": self.predicted_s or None}
        try:
            write_json_atomically(self.path, record)
        except StoreError:  # a look that cannot be written (a full disk) costs the run nothing; the next try may fit
            pass
        self._written = time.monotonic()


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


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
