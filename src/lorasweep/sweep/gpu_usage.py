"""Which GPU(s) a run of the plan used or uses, and its peak GPU memory: the plan view's GPU columns.

A running run says it in its progress.json (run/progress.py: cuda_visible_devices, else the device's
name in `gpu`; peak_gpu_mb so far), a finished one in its result.json (env.cuda_visible_devices,
memory.peak_gpu_mb). Other states (queued, interrupted, not started, over budget) show none: their
result, if any, is an earlier try's. A CUDA_VISIBLE_DEVICES of "" or "-1" hides every GPU: no GPU, as for CUDA itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..run.progress import read_progress
from .status import RunStatus
from .triage import Triage

FINISHED = ("done", "diverged", "failed", "pruned")  # states whose result.json is the run's latest word


@dataclass(frozen=True)
class GpuUsage:
    gpus: str = ""                   # CUDA_VISIBLE_DEVICES as given ("0", "2,3"), a device name, or ""
    peak_mb: float | None = None     # MiB

    @property
    def any(self) -> bool:
        return bool(self.gpus) or self.peak_mb is not None


def gpu_usage(decision: Triage, status: RunStatus) -> GpuUsage:
    """The GPUs and peak GPU memory of the run `decision` is about, at `status` (sweep/status.py)."""
    if status.state == "running" and decision.folder is not None:
        progress = read_progress(decision.folder)
        if progress is None:
            return GpuUsage()
        data = progress.data
        name = data.get("gpu") if data.get("gpu") not in (None, "cpu") else ""
        return GpuUsage(_gpu_ids(data.get("cuda_visible_devices")) or str(name or ""), _mb(data.get("peak_gpu_mb")))
    if status.state not in FINISHED:
        return GpuUsage()
    stored = decision.stored or {}
    env, memory = stored.get("env") or {}, stored.get("memory") or {}
    return GpuUsage(_gpu_ids(env.get("cuda_visible_devices")), _mb(memory.get("peak_gpu_mb")))


def _gpu_ids(value: Any) -> str:
    """CUDA_VISIBLE_DEVICES as it names GPUs; "" for none (unset, "", or a first id of -1)."""
    if not isinstance(value, str) or not value.strip() or value.strip().startswith("-"):
        return ""
    return value.strip()


def _mb(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
