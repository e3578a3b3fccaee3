"""Experiment tracking: off by default; `tracking=wandb`, `tracking=tensorboard` or `tracking=mlflow`.

Each tracked run logs its config, its curve (the Trainer's training logs and every evaluation, by
step) and its final test metrics (`test_<metric>`, at the last step). The runs of one sweep are
grouped: `tracking.group`, which a sweep's driver sets to the sweep's command line (its overrides,
lorasweep.sweep.compose.sweep_name) unless the user gave one; a single run has none.

- wandb: offline by default (no account or key): runs are written under the run's folder and can be
  uploaded later with `wandb sync`; a sweep's runs share a W&B group.
- tensorboard: event files under `tracking.dir` (default `<results_dir>/tensorboard`), one folder per
  sweep (named after its group), one per run in it (named like the run's folder); the config as text
  and as HParams, so `tensorboard --logdir` compares a sweep's runs.
- mlflow: `tracking.uri` (default: a local file store, `<results_dir>/mlruns`, no server; or a server
  URL, or any tracking URI MLflow takes); one experiment per sweep, named after its group
  (`tracking.experiment` for single runs); the config as params, the curve and the test metrics as
  metrics. MLflow 3 keeps its file store in maintenance mode and asks for MLFLOW_ALLOW_FILE_STORE=true
  to open one: set here for a local store, and needed by `mlflow ui` on it too.

A tracker that fails while the run trains (a server answering 503, a full disk under its files) is
said in one line, once, and logs nothing more: the run trains on, its result is what counts. Its
failure at the end is said too (run/lifecycle.close_tracker).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..console import say
from ..errors import ConfigError
from ..locks import exclusive
from .store import run_key_of

BACKENDS = ("none", "wandb", "tensorboard", "mlflow")
WANDB_MODES = ("offline", "online", "disabled")
PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}  # backend -> module to import
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # a URI scheme: http:, https:, file:, sqlite:, databricks ...


class Tracker:
    """The no-op tracker; subclasses send metrics somewhere."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, project: str, mode: str, folder: Path, name: str, config: dict, group: str | None):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, mode=mode, dir=str(folder), name=name, group=group,
                               config=config, reinit="create_new")  # a pack's runs are tracked at once

    def log(self, metrics, step):
        self._run.log(dict(metrics), step=step)

    def summary(self, metrics):
        self._run.summary.update(dict(metrics))

    def finish(self, ok=True):
        self._run.finish(exit_code=0 if ok else 1)


class TensorBoardTracker(Tracker):
    """Scalars by step in `logdir`; the config as a text summary and as HParams (with the final
    metrics, written when the run finishes, so that TensorBoard's HParams view compares the runs)."""

    def __init__(self, logdir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self._writer = SummaryWriter(log_dir=str(logdir))
        self._writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")  # TensorBoard renders markdown
        self._hparams = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                         for k, v in flatten(config).items()}
        self._step = 0
        self._final: dict[str, float] = {}

    def log(self, metrics, step):
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._step = max(self._step, step)

    def summary(self, metrics):
        self._final = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        for key, value in self._final.items():
            self._writer.add_scalar(key, value, self._step)

    def finish(self, ok=True):
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(self._hparams, self._final):  # experiment, session start, session end
            self._writer.file_writer.add_summary(summary)
        self._writer.close()


class MlflowTracker(Tracker):
    """One MLflow run, through MlflowClient (no global state: a worker process trains runs one after
    another): params from the config, metrics by step, FINISHED or FAILED at the end."""

    def __init__(self, uri: str, experiment: str, name: str, tags: dict[str, str], config: dict,
                 lock: Path | None = None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        with exclusive(lock):  # two workers of one sweep must not both create its experiment
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        self.run_id = self._client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self._client.log_batch(self.run_id, params=params[i:i + 100])
        self._step = 0

    def log(self, metrics, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        self._step = max(self._step, step)

    def summary(self, metrics):
        self.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, self._step)

    def finish(self, ok=True):
        self._client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class TrainsOn(Tracker):
    """`tracker`, whose failure to log a step is said once (naming `backend`) and stops its logging,
    not the run's training."""

    def __init__(self, tracker: Tracker, backend: str, slug: str):
        self.tracker, self.backend, self.slug = tracker, backend, slug
        self.failed = False

    def log(self, metrics, step):
        if self.failed:
            return
        try:
            self.tracker.log(metrics, step)
        except Exception as e:
            self.failed = True
            say(f"{self.slug}: the tracker ({self.backend}) failed to log step {step} ({type(e).__name__}: {e}); "
                f"training goes on, and it logs nothing more of this run")

    def summary(self, metrics):
        self.tracker.summary(metrics)

    def finish(self, ok=True):
        self.tracker.finish(ok)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lora": {"r": 8}} -> {"lora.r": 8}: a config as the flat keys trackers compare runs by."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def folder_name(group: str) -> str:
    """A group as one folder name: characters a shell and TensorBoard take as they are ('=' and ','
    kept: `lora.r=4,8_lora.proj=qk,qkvo`), the rest as '_'; a long one cut, with a hash of it all."""
    name = re.sub(r"[^A-Za-z0-9._,=+-]+", "_", group).strip("_.") or "sweep"
    if len(name) > 120:
        name = f"{name[:110]}-{hashlib.sha1(group.encode()).hexdigest()[:9]}"
    return name


def check_tracking(cfg: Mapping[str, Any]) -> None:
    """Validate the tracking group before any expensive work."""
    backend = cfg.get("backend", "none")
    if backend not in BACKENDS:
        raise ConfigError(f"tracking.backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    if backend == "none":
        return
    if backend == "wandb" and cfg.get("mode", "offline") not in WANDB_MODES:
        raise ConfigError(f"tracking.mode={cfg.get('mode')!r} is invalid: choose one of {', '.join(WANDB_MODES)}")
    if importlib.util.find_spec(PACKAGES[backend]) is None:  # not imported here: mlflow alone takes 2.5 s
        raise ConfigError(f"tracking={backend} needs the {backend} package: pip install 'lorasweep[{backend}]'")
    uri = str(cfg.get("uri") or "")
    if backend == "mlflow" and uri.startswith(("http://", "https://")):
        why = _unanswered(uri.rstrip("/"))
        if why:
            raise ConfigError(f"tracking.uri={uri} does not answer ({why}): start the MLflow server, or leave "
                              f"tracking.uri unset for a local file store in the results store")


@functools.lru_cache(maxsize=None)
def _unanswered(url: str) -> str:
    """Why the server at `url` gives no answer, or "" when it answers (any HTTP status: a server
    behind a login answers too). Asked once per process: MLflow's own client retries a dead URL for
    minutes, run after run."""
    try:
        urllib.request.urlopen(f"{url}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return ""
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", None) or e)
    return ""


def make_tracker(cfg: Mapping[str, Any], folder: Path, name: str, config: dict) -> Tracker:
    """The run's tracker. `folder`: the run's folder in the results store (its parent holds the
    default TensorBoard and MLflow stores); `name`: the run's slug."""
    backend = cfg.get("backend", "none")
    if backend == "none":
        return Tracker()
    return TrainsOn(_backend_tracker(backend, cfg, folder, name, config), backend, name)


def _backend_tracker(backend: str, cfg: Mapping[str, Any], folder: Path, name: str, config: dict) -> Tracker:
    group = cfg.get("group") or None
    if backend == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        return WandbTracker(project=cfg.get("project", "lorasweep"), mode=cfg.get("mode", "offline"),
                            folder=folder, name=name, config=config, group=group)
    if backend == "tensorboard":
        root = Path(cfg.get("dir") or folder.parent / "tensorboard")
        return TensorBoardTracker((root / folder_name(group) if group else root) / folder.name, config)
    uri, lock = mlflow_uri(cfg, folder.parent)
    tags = {"lorasweep.run_key": run_key_of(folder), "lorasweep.run_folder": str(folder)}
    if group:
        tags["lorasweep.sweep"] = group
    return MlflowTracker(uri, group or cfg.get("experiment") or "lorasweep", name, tags, config, lock)


def mlflow_uri(cfg: Mapping[str, Any], results_dir: Path) -> tuple[str, Path | None]:
    """(tracking URI, the lock file that serialises creating experiments in a local file store, else
    None: a server or a database makes names unique itself). tracking.uri=null: <results_dir>/mlruns."""
    uri = str(cfg.get("uri") or results_dir / "mlruns")
    if _URI.match(uri) and not uri.startswith("file:"):
        return uri, None
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    store = Path(uri.removeprefix("file://").removeprefix("file:")).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return str(store), store / ".lorasweep.lock"
