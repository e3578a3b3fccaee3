"""Experiment tracking: off by default; `tracking=wandb` logs to Weights & Biases.

wandb's offline mode needs no account or key: runs are written under the run's folder and can be
uploaded later with `wandb sync`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

BACKENDS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


class Tracker:
    """The no-op tracker; subclasses send metrics somewhere."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, project: str, mode: str, folder: Path, name: str, config: dict):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, mode=mode, dir=str(folder), name=name,
                               config=config, reinit="finish_previous")

    def log(self, metrics, step):
        self._run.log(dict(metrics), step=step)

    def summary(self, metrics):
        self._run.summary.update(dict(metrics))

    def finish(self, ok=True):
        self._run.finish(exit_code=0 if ok else 1)


def check_tracking(cfg: Mapping[str, Any]) -> None:
    """Validate the tracking group before any expensive work."""
    backend = cfg.get("backend", "none")
    if backend not in BACKENDS:
        raise ConfigError(f"tracking.backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    if backend == "wandb":
        if cfg.get("mode", "offline") not in WANDB_MODES:
            raise ConfigError(f"tracking.mode={cfg.get('mode')!r} is invalid: choose one of "
                              f"{', '.join(WANDB_MODES)}")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("tracking=wandb needs the wandb package: pip install 'lorasweep[wandb]'") from None


def make_tracker(cfg: Mapping[str, Any], folder: Path, name: str, config: dict) -> Tracker:
    if cfg.get("backend", "none") == "none":
        return Tracker()
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbTracker(project=cfg.get("project", "lorasweep"), mode=cfg.get("mode", "offline"),
                        folder=folder, name=name, config=config)
