"""What runs inside a worker process (a local worker, a SLURM job): process setup, then one run.

`execute(cfg)` is the one entry point that executors send runs to: it runs the composed config
through lorasweep.run.lifecycle, with a pruning reporter when the run is a trial of an Optuna sweep,
and on data-parallel ranks that this process starts when its sweep gives each run several GPUs
(executors/data_parallel).
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
from typing import Any, Mapping

from ..console import PlainText, quiet_libraries, say
from ..errors import RunClaimedError

STOPPED_EXIT = 128 + signal.SIGTERM  # a worker's exit status after a clean stop (what a shell shows for SIGTERM)
PACK, FOLDERS = "pack", "folders"  # the keys of a task that trains several runs as one pack
FAILED, TRACEBACK = "failed", "traceback"  # a pack's entry for a run that failed (pack_failure)


class Stopped(KeyboardInterrupt):
    """SIGTERM in a local worker: the sweep is stopping. Not an Exception, so the run records no
    failure (it left no result and trains again next time); its `finally` blocks still run."""


def execute(cfg: Mapping[str, Any], log_file: str | None = None) -> dict:
    """One run of a sweep, in this process; its console output goes to `log_file` when given.
    A run another process is training now (lorasweep.run.claims) is not started: the return is
    {"claimed_by": who}, for its driver to wait for that run's result (a plain value, not an
    exception: it comes back alike from a local worker and from a SLURM job)."""
    if log_file is None:
        return _run(cfg)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = PlainText(log)  # no terminal colour codes in a log file
        try:
            return _run(cfg)
        finally:
            sys.stdout, sys.stderr = saved


def claimed_by(future) -> str:
    """Who trains the run, when a worker (or SLURM job) found it claimed by another process and
    returned {"claimed_by": who} from `execute`; "" for any other outcome."""
    if future.exception() is not None:
        return ""
    result = future.result()
    return result.get("claimed_by", "") if isinstance(result, dict) else ""


def _run(cfg: Mapping[str, Any]) -> dict:
    from ..run.lifecycle import run_config
    from ..config.checks import data_parallel

    if PACK in cfg:
        return _run_pack(cfg)
    trainer = None
    if data_parallel(cfg) > 1:  # hydra.launcher.gpus_per_run > 1: this process starts the run's ranks
        from .data_parallel import rank_trainer

        trainer = rank_trainer(cfg, data_parallel(cfg))
    try:
        return run_config(cfg, _reporter(cfg), triaged=True, trainer=trainer)
    except RunClaimedError as e:
        return {"claimed_by": e.holder}
    except Stopped:
        say("stopped by the sweep (SIGTERM) before the run finished: no result written; it trains again next time")
        raise


def pack_task(cfgs: list[dict], folders: list[Path]) -> dict:
    """What an executor is sent to train `cfgs` (whose run folders are `folders`) as one pack
    (lorasweep.run.pack); its result is {"pack": [each run's outcome, each with its "run_key": its
    result, {"claimed_by": who}, or {"failed": exception, "traceback": text} (pack_failure)]}."""
    return {PACK: cfgs, FOLDERS: [str(f) for f in folders]}


def task_folders(cfg: Mapping[str, Any], folder: Path) -> list[Path]:
    """The run folders of a task sent with `folder`: a pack's, or the one run's."""
    return [Path(f) for f in cfg[FOLDERS]] if PACK in cfg else [Path(folder)]


def members(cfg: Mapping[str, Any]) -> list[dict]:
    """The run configs of a task: a pack's, or the one run's."""
    return list(cfg[PACK]) if PACK in cfg else [dict(cfg)]


def _run_pack(task: Mapping[str, Any]) -> dict:
    from ..run.pack import run_pack
    from ..run.store import run_key_of

    cfgs = task[PACK]
    try:
        outcomes = run_pack(cfgs, [_reporter(cfg) for cfg in cfgs])
    except Stopped:
        say("stopped by the sweep (SIGTERM) before the pack finished: its unfinished runs wrote no result; "
            "they train again next time")
        raise
    return {PACK: [_failure_entry(o, run_key_of(folder)) if isinstance(o, Exception) else o
                   for o, folder in zip(outcomes, task_folders(task, None))]}


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


def _reporter(cfg: Mapping[str, Any]):
    """A trial of an Optuna sweep reports its evaluations to its pruner (lorasweep.run.pruning)."""
    if "trial" not in cfg:
        return None
    from ..run.pruning import reporter_for

    return reporter_for(cfg["trial"])


def serve(conn, threads: int | None, gpus: str | None = None) -> None:
    """A local worker: receive (task id, cfg, log file), run it, send back ("result", task id, result)
    or ("error", task id, exception, its traceback); None from the driver ends it. `gpus`: its
    CUDA_VISIBLE_DEVICES (executors/gpus), set before anything here can initialise CUDA."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # so does a closed terminal
    signal.signal(signal.SIGTERM, _stop)
    try:
        die_with_parent()
        configure_process(threads)
        while (task := conn.recv()) is not None:
            task_id, cfg, log_file = task
            _reset_peak_rss()
            try:
                reply = ("result", task_id, execute(cfg, log_file))
            except Exception as e:  # the run recorded itself failed; the driver says why
                reply = ("error", task_id, *_portable(e))
            conn.send(reply)
    except Stopped:
        raise SystemExit(STOPPED_EXIT) from None
    except EOFError:  # the driver is gone
        pass


def _stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the cleanup short
    raise Stopped


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
