"""Runs executed as SLURM jobs through submitit, with the same submit_many -> Futures interface as
LocalExecutor (lorasweep.executors.local).

- Runs submitted together go as job arrays, split at the cluster's MaxArraySize.
- Each run's folder in the results store gets `slurm_job.json` (job id, submitit folder; slurm_jobs.py). A driver
  started again finds a run that is still queued or running there and re-attaches to its job
  instead of submitting it twice; done runs are found by their result.json before that.
- A job that reaches its time limit or is preempted gets USR2 `signal_delay_s` before it is killed;
  submitit then calls `SlurmRun.checkpoint` and requeues the job, and the run resumes from its last
  Trainer checkpoint in the run folder (lorasweep.run.loop).
- An sbatch that fails (unknown partition, more CPUs or memory than a node has, bad gres) raises
  SubmissionError with sbatch's own message, before anything waits.
- A job asks for exactly the GPUs its one run uses (gpus_per_run); SlurmSettings.from_config refuses
  any other GPU ask before anything is submitted (slurm_gpus.py).
- `timeout_min: auto` and `mem_gb: auto` ask each array for its runs' predicted cost plus a margin
  (slurm_auto.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit

from ..compat import job_outcome
from ..console import say
from ..errors import ConfigError, SubmissionError
from ..run.claims import drop_job_claim
from ..run.store import store_dir
from .job import Job
from .slurm_auto import check_auto, is_auto
from .slurm_gpus import check_job_gpus, gres_gpu_mb, gres_gpus
from .slurm_jobs import job_state, read_record, record
from .worker import configure_process, execute

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")  # PREEMPTED without requeue; submitit requeues before that
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize
SACCT_EVERY_S = 5
TRACEBACK_LINES = 30  # of a failed job's traceback, shown by the driver


class SlurmRunError(RuntimeError):
    """A run failed inside its SLURM job; the message carries the job id and its traceback."""


@dataclass
class SlurmSettings:
    """hydra/launcher=slurm settings; the names follow hydra-submitit-launcher's."""

    submitit_folder: str = ".submitit"
    partition: str | None = None
    timeout_min: Any = 60           # minutes, or auto: the run's predicted time + time_margin (slurm_auto)
    cpus_per_task: int | None = 1
    mem_gb: Any = None              # GiB, null (the partition's default), or auto: predicted + mem_margin
    time_margin: float = 0.5        # what auto adds to a prediction (0.5: +50%)
    mem_margin: float = 0.25
    gpu_mem_gb: Any = None          # each job's GPU's memory: a run predicted not to fit is refused (null: its gres type's)
    gres: str | None = None
    gpus_per_node: int | None = None
    gpus_per_run: Any = 1           # GPUs the job's run uses: its GPU ask must be this many (slurm_gpus)
    runs_per_gpu: Any = 1           # one run per job: only 1 (the key is local.yaml's, refused above 1 here)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256
    signal_delay_s: int = 120       # USR2 this long before the time limit: time to checkpoint and requeue
    max_num_timeout: int = 3        # requeues after a time limit (preemptions are not counted)
    setup: list[str] = field(default_factory=list)               # shell lines before the run
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    poll_s: float = 1.0             # how often the driver looks for finished runs
    retries: Any = 0                # a failed run submitted again up to this many times (the sweep's; checked there)
    pack: Any = False               # compatible runs trained together, a pack per job (the sweep's; sweep/packs)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SlurmSettings":
        """The settings, checked: ConfigError for an unknown key or a GPU ask its run would not use."""
        from omegaconf import OmegaConf

        cfg = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in cfg.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known - {"_target_"})
        if unknown:
            raise ConfigError(f"hydra.launcher: unknown SLURM setting(s) {unknown}; valid: {sorted(known)}")
        settings = cls(**{k: v for k, v in cfg.items() if k in known})
        check_auto("timeout_min", settings.timeout_min, "each job's time limit in minutes")
        check_auto("mem_gb", settings.mem_gb, "each job's memory in GiB")
        check_job_gpus(settings.gres, settings.gpus_per_node, settings.gpus_per_run, settings.runs_per_gpu)
        return settings

    def sbatch_parameters(self) -> dict[str, Any]:
        # submitit.SlurmExecutor takes sbatch's names: time (minutes), mem
        params: dict[str, Any] = {"signal_delay_s": int(self.signal_delay_s),
                                  "array_parallelism": self.array_parallelism,
                                  "additional_parameters": dict(self.additional_parameters)}
        # (submitit runs the job through srun: sbatch --signal reaches job steps, not the batch script)
        if not is_auto(self.timeout_min):  # auto: asked per array (SlurmExecutor._submit_array)
            params["time"] = int(self.timeout_min)
        if self.mem_gb and not is_auto(self.mem_gb):
            params["mem"] = f"{int(self.mem_gb * 1024)}M"
        for name in ("partition", "cpus_per_task", "gres", "gpus_per_node", "account", "qos", "constraint"):
            if getattr(self, name) not in (None, ""):
                params[name] = getattr(self, name)
        if self.setup:
            params["setup"] = list(self.setup)
        return params

    def target(self):
        """Where a job trains, for its predicted cost (run/predict.Target): a GPU if it asks for one,
        else its CPUs, on a node not known yet (calibrated on the store's runs of any machine)."""
        from ..run.predict import Target  # torch: only where a prediction is made

        gpu = bool(gres_gpus(self.gres) or self.gpus_per_node)
        return Target("cuda" if gpu else "cpu", None, int(self.cpus_per_task or 1))

    def gpu_mb(self) -> float | None:
        """The memory of each job's GPU in MiB: gpu_mem_gb, else its gres type's (gpu:a100:1), else None."""
        if not self.target().device == "cuda":
            return None
        if self.gpu_mem_gb:
            return float(self.gpu_mem_gb) * 1024
        return gres_gpu_mb(self.gres)


class SlurmRun(submitit.helpers.Checkpointable):
    """What a SLURM job runs: one run, or one pack (a pack does not checkpoint: requeued, it trains
    again from its start). On USR2 (time limit or preemption) submitit calls checkpoint(),
    inherited: the same call again, and the run then resumes from its Trainer checkpoint."""

    def __call__(self, job: Job) -> dict:
        # the job's share of the node's cores, not all of them
        configure_process(int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or None)
        return execute(job)


class SlurmExecutor:
    """submit_many([Job]) -> Futures of the jobs' results, as SLURM jobs."""

    def __init__(self, settings: SlurmSettings, n_jobs: int | None = None):
        self.settings = settings
        self.folder = Path(settings.submitit_folder).resolve() / "%j"
        # runs in flight: a grid goes to the cluster whole (SLURM throttles arrays by array_parallelism);
        # an Optuna sweep keeps its n_jobs trials in flight
        self.n_jobs = n_jobs or 10**9
        self.pack_spread = 1  # pack=true: each group of compatible runs is one pack, one job (sweep/packs)
        self.verb = "submitted"
        self._executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=settings.max_num_timeout)
        self._executor.update_parameters(**settings.sbatch_parameters())
        self._watched: dict[Future, submitit.slurm.slurm.SlurmJob] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="slurm-watcher", daemon=True)
        self._thread.start()

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, job: Job) -> Future:
        return self.submit_many([job])[0]

    def submit_many(self, items: Sequence[Job]) -> list[Future]:
        """Submit the jobs as job arrays (or re-attach to their SLURM jobs still queued or running)."""
        futures: list[Future | None] = [None] * len(items)
        fresh: list[int] = []
        for i, item in enumerate(items):
            job = self._live_job(item.folder)
            if job is not None:
                futures[i] = self._future(job, item.folder, attached=True)
            else:
                fresh.append(i)
        chunk = max_array_size()
        for start in range(0, len(fresh), chunk):
            part = fresh[start:start + chunk]
            jobs = self._submit_array([_absolute(items[i]) for i in part])
            for i, job in zip(part, jobs):
                for folder in items[i].folders:  # each run of a pack names its job: a restarted driver follows it
                    record(folder, job.job_id, self.folder)
                futures[i] = self._future(job, items[i].folder, attached=False, folders=list(items[i].folders))
        return futures  # type: ignore[return-value]

    def _submit_array(self, jobs: list[Job]) -> list:
        auto_time, auto_mem = is_auto(self.settings.timeout_min), is_auto(self.settings.mem_gb)
        if auto_time or auto_mem:  # the array's jobs share their settings: the largest of their predictions
            from .slurm_auto import requests

            asked = requests(jobs, self.settings.target(), auto_time, auto_mem, self.settings.time_margin,
                             self.settings.mem_margin)
            self._executor.update_parameters(**({"time": asked.time_min} if asked.time_min else {}),
                                             **({"mem": f"{asked.mem_mb}M"} if asked.mem_mb else {}))
            say(f"SLURM jobs ask for {asked.note}")
        try:
            with self._executor.batch():  # one sbatch --array for the lot
                return [self._executor.submit(SlurmRun(), job) for job in jobs]
        except submitit.core.utils.FailedJobError as e:  # submitit's wrapper of sbatch's stderr
            raise SubmissionError(_sbatch_error(e)) from None

    def _live_job(self, folder: Path):
        """The job this run was submitted as, if it is still queued or running (else None)."""
        found = read_record(folder)
        if found is None:
            return None
        job = submitit.SlurmJob(folder=found["submitit_folder"], job_id=found["job_id"])
        if job.paths.result_pickle.exists():  # finished: collect a success (its result.json may be a
            # moment behind); a failure is submitted again, like a failed local run
            return job if job_outcome(job)[0] == "success" else None
        state = job_state(found["job_id"])
        return None if state is None or state.split()[0] in FINAL_STATES else job

    # -- waiting ----------------------------------------------------------------------------------

    def _future(self, job, folder: Path, attached: bool, folders: list[Path] | None = None) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        future.job_id = job.job_id  # type: ignore[attr-defined]
        future.run_folders = folders or [folder]  # type: ignore[attr-defined]
        future.note = (f"{'re-attached to' if attached else 'submitted as'} job {job.job_id}, "  # type: ignore[attr-defined]
                       f"log {job.paths.stderr}")
        with self._lock:
            self._watched[future] = job
        return future

    def _watch(self) -> None:
        """Resolve futures: a result file means done at once; otherwise sacct, in one call for all."""
        last_sacct = 0.0
        while not self._stop.wait(self.settings.poll_s):
            with self._lock:
                watched = dict(self._watched)
            if not watched:
                continue
            # a job that died without a result (cancelled, killed, out of memory) shows only in sacct:
            # one call for all jobs, at most every SACCT_EVERY_S (sacct is slow on a busy cluster)
            check = time.time() - last_sacct > max(SACCT_EVERY_S, 5 * self.settings.poll_s)
            if check:
                last_sacct = time.time()
                submitit.SlurmJob.watcher.update()
            for future, job in watched.items():
                try:
                    finished = check and job.watcher.is_done(job.job_id, mode="cache")
                    if finished or job.paths.result_pickle.exists():
                        self._resolve(future, job)
                except Exception as e:  # never let the watcher die: the driver would wait forever
                    self._drop(future)
                    future.set_exception(e)

    def _resolve(self, future: Future, job) -> None:
        self._drop(future)
        try:
            outcome, value = job_outcome(job)  # ("success", result) or ("error", traceback)
        except submitit.core.utils.UncompletedJobError as e:  # killed: its claim is left behind
            for folder in future.run_folders:  # type: ignore[attr-defined]
                drop_job_claim(folder, job.job_id)
            future.set_exception(SlurmRunError(f"job {job.job_id} ended without a result ({job.state}):\n{e}"))
            return
        if outcome == "success":
            future.set_result(value)
        else:
            lines = value.rstrip().splitlines()
            shown = lines[-TRACEBACK_LINES:]  # the end of a chained traceback is the part that says why
            cut = f"  ... ({len(lines) - len(shown)} lines above)\n" if len(lines) > len(shown) else ""
            future.set_exception(SlurmRunError(f"job {job.job_id} failed:\n{cut}" + "\n".join(shown)
                                               + f"\n(the job's full log: {job.paths.stderr})"))

    def _drop(self, future: Future) -> None:
        with self._lock:
            self._watched.pop(future, None)

    def follows(self, folder: Path) -> bool:
        """Whether the run in `folder` is a job of ours still queued or running (a driver started again
        after it was killed): submit_many re-attaches to it, where a driver would otherwise wait for
        its claim. Another sweep's job is not followed: its result is waited for."""
        return self._live_job(folder) is not None

    def in_flight(self) -> list[str]:
        with self._lock:
            return [job.job_id for job in self._watched.values()]

    def shutdown(self, cancel: bool = False) -> None:
        """Stop watching. Jobs are never cancelled here: on a cluster a run outlives its driver, and
        the same command started again collects it."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "SlurmExecutor":
        return self

    def __exit__(self, *_) -> None:
        self.shutdown()


def max_array_size() -> int:
    """Jobs per array: the cluster's MaxArraySize (array indices run 0..MaxArraySize-1)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def _absolute(job: Job) -> Job:
    """The job may start in another directory: the results store as an absolute path (each run's, in a pack)."""
    return replace(job, configs=tuple({**cfg, "results_dir": str(store_dir(cfg).resolve())} for cfg in job.configs))


def _sbatch_error(e: Exception) -> str:
    """sbatch's own error lines, in one line."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if "sbatch: error" in ln or "submission failed" in ln.lower()]
    return "; ".join(dict.fromkeys(ln.replace("sbatch: error: ", "") for ln in lines)) or text.strip()
