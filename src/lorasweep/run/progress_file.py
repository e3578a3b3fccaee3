"""The training loop's writer of a run's progress.json (the file and its fields: run/progress.py):
a Trainer callback that writes it (atomically, run/store.write_json_atomically) when training
begins, after its first step (the first rate), then at most every WRITE_EVERY_S after a step, at
each evaluation and when training ends. Apart from run/progress.py, which a sweep's driver reads
without importing transformers.
"""
from __future__ import annotations

import math
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..errors import StoreError
from .progress import eta_seconds
from .store import peak_memory, slurm_job_id, write_json_atomically

# A write is a temp file, an fsync and a rename: every 5 s is nothing beside a training step, and
# fresh enough for a person looking at a sweep (the plan view's ETA counts down from updated_at).
WRITE_EVERY_S = 5.0
EVAL_METRICS = ("accuracy", "token_accuracy", "exact_match", "loss")  # the first one an evaluation has is shown


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


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
