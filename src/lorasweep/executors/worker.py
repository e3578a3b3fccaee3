"""What runs inside a worker process (a local worker, a SLURM job): process setup, then one run.

`execute(job)` is the one entry point that executors send runs to (a Job, executors/job.py: one
run, or a pack): it runs each composed config through lorasweep.run.lifecycle (a pack: run/pack),
with a pruning reporter when the run is a trial of an Optuna sweep, and on data-parallel ranks that
this process starts when its sweep gives each run several GPUs (executors/data_parallel).
Its driver has triaged it already (and said, e.g., that its stored result was unreadable).

`serve(conn, threads, gpus)` is a local worker's whole life (lorasweep.executors.local): it runs what its
driver sends, one run at a time, until told to end. The driver decides about signals: a worker
ignores Ctrl-C and a closed terminal (both reach the whole process group), and turns SIGTERM (the
driver stopping an interrupted sweep, or the driver's own death: die_with_parent) into `Stopped`,
raised where the run is, so that its `finally` blocks run and it writes no result.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..console import PlainText, quiet_libraries, say
from ..errors import RunClaimedError
from .job import Job

STOPPED_EXIT = 128 + signal.SIGTERM  # a worker's exit status after a clean stop (what a shell shows for SIGTERM)
PACK = "pack"  # the key of a pack's result: each run's outcome
FAILED, TRACEBACK = "failed", "traceback"  # a pack's entry for a run that failed (pack_failure)


class Stopped(KeyboardInterrupt):
    """SIGTERM in a local worker: the sweep is stopping. Not an Exception, so the run records no
    failure (it left no result and trains again next time); its `finally` blocks still run."""


def execute(job: Job, log_file: str | None = None) -> dict:
    """One job of a sweep (a run, or a pack), in this process; its console output goes to `log_file` when given.
    A run another process is training now (lorasweep.run.claims) is not started: the return is
    {"claimed_by": who}, for its driver to wait for that run's result (a plain value, not an
    exception: it comes back alike from a local worker and from a SLURM job)."""
    if log_file is None:
        return _run(job)
    from ..run.records import store_write

    with store_write(Path(log_file)):  # a store that refuses (read-only, full): its StoreError, as the run's writes
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "a", buffering=1)
    with log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = PlainText(log)  # no terminal colour codes in a log file
        try:
            return _run(job)
        finally:
            sys.stdout, sys.stderr = saved


def claimed_by(future) -> str:
    """Who trains the run, when a worker (or SLURM job) found it claimed by another process and
    returned {"claimed_by": who} from `execute`; "" for any other outcome."""
    if future.exception() is not None:
        return ""
    result = future.result()
    return result.get("claimed_by", "") if isinstance(result, dict) else ""


def _run(job: Job) -> dict:
    from ..run.lifecycle import run_config

    if job.is_pack:
        return _run_pack(job)
    trainer = None
    if job.ranks > 1:  # hydra.launcher.gpus_per_run > 1: this process starts the run's ranks
        from .data_parallel import rank_trainer

        trainer = rank_trainer(job.configs[0], job.ranks)
    try:
        return run_config(job.configs[0], _reporter(job.trials[0]), triaged=True, trainer=trainer)
    except RunClaimedError as e:
        return {"claimed_by": e.holder}
    except Stopped:
        say("stopped by the sweep (SIGTERM) before the run finished: no result written; it trains again next time")
        raise


def pack_task(cfgs: list[dict], folders: list[Path], trials: Sequence[Mapping[str, Any] | None] = ()) -> Job:
    """The job that trains `cfgs` (whose run folders are `folders`) as one pack (lorasweep.run.pack);
    its result is {"pack": [each run's outcome, each with its "run_key": its result, {"claimed_by":
    who}, or {"failed": exception, "traceback": text} (pack_failure)]}."""
    return Job.pack(cfgs, folders, trials)


def _run_pack(job: Job) -> dict:
    from ..run.pack import run_pack
    from ..run.store import run_key_of

    try:
        outcomes = run_pack(list(job.configs), [_reporter(trial) for trial in job.trials])
    except Stopped:
        say("stopped by the sweep (SIGTERM) before the pack finished: its unfinished runs wrote no result; "
            "they train again next time")
        raise
    return {PACK: [_failure_entry(o, run_key_of(folder)) if isinstance(o, Exception) else o
                   for o, folder in zip(outcomes, job.folders)]}


def _failure_entry(error: Exception, run_key: str) -> dict:
    """A failed run's entry in its pack's result: its exception as the way back (a pipe, submitit's
    pickle) can carry it, and its traceback as text (pickling drops it)."""
    error, text = _portable(error)
    return {"run_key": run_key, FAILED: error.with_traceback(None), TRACEBACK: text}  # no frame held: they hold the pack's model


def pack_failure(outcome: Any) -> Exception | None:
    """The exception a run of a pack failed with (an entry of its task's result), the worker's
    traceback chained under it as Python shows a chained exception; None for any other outcome."""
    if not (isinstance(outcome, dict) and FAILED in outcome):
        return None
    return with_remote_traceback(outcome[FAILED], outcome.get(TRACEBACK, ""))


def with_remote_traceback(error: BaseException, text: str) -> BaseException:
    """`error`, sent back by a worker, with the worker's traceback `text` (which pickling drops)
    chained under it: what Hydra shows after a sweep for a failed run."""
    if text:
        error.__cause__ = RemoteTraceback(text)
    return error


class RemoteTraceback(Exception):
    """The worker's traceback of a failed run, chained under the exception the driver raises."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _reporter(trial: Mapping[str, Any] | None):
    """A trial of an Optuna sweep reports its evaluations to its pruner (lorasweep.run.pruning)."""
    if trial is None:
        return None
    from ..run.pruning import reporter_for

    return reporter_for(trial)


def serve(conn, threads: int | None, gpus: str | None = None) -> None:
    """A local worker: receive (task id, job, log file), run it, send back ("result", task id, result)
    or ("error", task id, exception, its traceback); None from the driver ends it. `gpus`: its
    CUDA_VISIBLE_DEVICES (executors/gpus), set before anything here can initialise CUDA."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # so does a closed terminal
    sys.unraisablehook = _quiet_when_stopped
    try:
        try:
            signal.signal(signal.SIGTERM, _stop)
            die_with_parent()
            configure_process(threads)
            while (task := conn.recv()) is not None:
                task_id, job, log_file = task
                _reset_peak_rss()
                try:
                    reply = ("result", task_id, execute(job, log_file))
                except Exception as e:  # the run recorded itself failed; the driver says why
                    reply = ("error", task_id, *_portable(e))
                conn.send(reply)
                if _stopping:  # Stopped was raised where Python swallows it (a __del__, a weakref callback)
                    raise Stopped
        finally:  # served: a SIGTERM from now on (the driver's death, as we exit) has nothing to stop; one
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before this line is caught below
    except Stopped:
        raise SystemExit(STOPPED_EXIT) from None
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the driver is gone (killed while we ran)
        pass


_stopping = False  # SIGTERM came: no next run, even if its Stopped was swallowed


def _stop(signum, frame) -> None:
    global _stopping
    _stopping = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the cleanup short
    raise Stopped


def _quiet_when_stopped(unraisable) -> None:
    """Python's report of an exception it swallowed (in a __del__, a weakref callback): none for our
    Stopped, which `_stopping` carries on (a stopped sweep is said in one line, by its driver); the
    default report for any other."""
    if not isinstance(unraisable.exc_value, Stopped):
        sys.__unraisablehook__(unraisable)


def _portable(error: Exception) -> tuple[Exception, str]:
    """The exception as the driver can unpickle it (else a RuntimeError saying what it was), and its
    traceback, which pickling drops."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(error))
    try:
        pickle.loads(pickle.dumps(error))
        return error, text
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}"), text


def _reset_peak_rss() -> None:
    """Linux keeps a process's peak RSS (VmHWM, what the driver reads when a worker dies); a kept
    worker resets it before each run, so that it is this run's peak, not an earlier run's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or an old kernel: the worker's peak since it started
        pass


def configure_process(threads: int | None) -> None:
    """Set up a process that runs runs: its share of the cores (`threads`; None keeps torch's
    default) and quiet libraries."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
    quiet_libraries()


def die_with_parent() -> None:
    """A worker whose sweep driver is killed (even with SIGKILL) stops too, instead of training on
    unseen while a restarted driver starts the same run again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the driver's shutdown(cancel=True) still stops them
        pass
