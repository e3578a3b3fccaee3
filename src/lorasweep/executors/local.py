"""Runs executed in worker processes on this machine, N at a time.

Workers are lorasweep's own processes (spawned, not forked), started as runs need them and kept
across runs (torch, transformers and a model's first load are paid once per worker, not once per
run), each with its share of the cores so that parallel runs do not oversubscribe them, and on a
GPU machine each pinned to its own GPU (executors/gpus: CUDA_VISIBLE_DEVICES per worker). A run's
console output goes to its log file when several run at once. One thread of the driver watches
them: it hands out queued runs, collects results and reads each busy worker's peak RSS.

A worker that dies under its run (the kernel's out-of-memory killer sends SIGKILL) fails that run
only: the run is recorded failed with the signal and the worker's peak RSS
(run/records.record_worker_death), its future raises WorkerDiedError, and a new worker takes the
next run; the other runs in flight go on untouched.

Stopping (shutdown(cancel=True): an interrupted sweep): the workers get SIGTERM, which each turns
into an exception where its run is (executors/worker.serve): `finally` blocks run, no result is
written, the run trains again next time. A second Ctrl-C, or a worker not gone within GRACE_S,
kills them (SIGKILL). Workers ignore Ctrl-C and a closed terminal themselves: the driver decides.
"""
from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Sequence

from ..console import say
from ..errors import WorkerDiedError
from .deaths import death_reason
from ..run.store import run_key_of
from .job import Job
from .worker import PACK, STOPPED_EXIT, Stopped, serve, with_remote_traceback

GRACE_S = 30      # a worker told to stop (SIGTERM) has this long to end its run cleanly, then it is killed
SAMPLE_S = 0.25   # how often a busy worker's peak RSS is read: a death reports the last reading


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, the cpuset of a SLURM allocation
    or a container), which can be far fewer than the machine's `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS (macOS): all the machine's cores
        return os.cpu_count() or 1


def threads_per_run(n_jobs: int, threads: int | None = None) -> int:
    """Explicit `threads`, else the usable cores split evenly between the runs in flight (at least 1)."""
    return threads if threads and threads > 0 else max(1, usable_cores() // max(1, n_jobs))


@dataclass
class _Task:
    id: int
    job: Job
    log_file: str | None
    future: Future
    given_at: float = 0.0  # wall clock, when a worker took it: what its runs left since is this attempt's


class _Worker:
    """One worker process, the pipe to it, and the run it has (if any)."""

    def __init__(self, context, threads: int, gpus: str | None = None) -> None:
        self.conn, theirs = context.Pipe()
        self.gpus = gpus  # its CUDA_VISIBLE_DEVICES; None: not pinned (no GPU here)
        self.process = context.Process(target=serve, args=(theirs, threads, gpus), name="lorasweep-worker")
        self.process.start()
        theirs.close()
        self.task: _Task | None = None
        self.peak_rss: int | None = None  # bytes, of its current run

    def give(self, task: _Task) -> None:
        self.task, self.peak_rss = task, None
        task.given_at = time.time()
        try:
            self.conn.send((task.id, task.job, task.log_file))
        except OSError:  # it died already: its sentinel says so next, and the run fails with the cause
            pass
        except Exception as e:  # a job that cannot be pickled: that run fails, the worker stays
            self.task = None
            task.future.set_exception(e)


class LocalExecutor:
    """submit(cfg) -> Future of the run's result dict; `n_jobs` runs in flight at once. `gpus`: each
    worker slot's CUDA_VISIBLE_DEVICES (executors/gpus.place_workers), or None to pin none."""

    verb = "started"

    def __init__(self, n_jobs: int = 1, threads: int | None = None, gpus: Sequence[str] | None = None):
        self.n_jobs = max(1, n_jobs)
        self.threads = threads_per_run(self.n_jobs, threads)
        self.pack_spread = self.n_jobs  # pack=true: each group of compatible runs split into a pack per worker
        self.gpus = list(gpus) if gpus else None
        if self.gpus is not None and len(self.gpus) < self.n_jobs:
            raise ValueError(f"LocalExecutor: {self.n_jobs} workers but GPUs for {len(self.gpus)}")
        # spawn, not fork: a forked child inherits torch's thread pools and locks mid-state
        self._context = multiprocessing.get_context("spawn")
        self._queue: deque[_Task] = deque()
        self._workers: list[_Worker] = []  # the watcher's, until shutdown has stopped it
        self._futures: list[Future] = []  # submitted and not yet seen done
        self._lock = threading.Lock()
        self._closing = False
        self._shut = False
        self._stopped_watching = threading.Event()  # the watcher has left its loop
        self._all_gone = threading.Event()  # shutdown has ended every worker: the watcher thread may end
        # workers left by a driver that never called shutdown are killed before multiprocessing
        # joins its children at exit (it would wait forever on a worker waiting for its next run)
        multiprocessing.util.Finalize(self, _kill_workers, args=(self._workers,), exitpriority=10)
        self._ids = itertools.count()
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._watcher = threading.Thread(target=self._watch, name="lorasweep-workers", daemon=True)
        self._watcher.start()

    def submit(self, job: Job, log_file: Path | None = None) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("LocalExecutor: submit after shutdown")
            self._queue.append(_Task(next(self._ids), job, str(log_file) if log_file else None, future))
            self._futures = [f for f in self._futures if not f.done()] + [future]
        self._wake_w.send_bytes(b"")
        return future

    def follows(self, folder: Path) -> bool:
        """Runs claimed elsewhere are never this executor's: its workers' runs end with their driver."""
        return False

    def in_flight(self) -> list[str]:
        """Nothing goes on without the driver: its workers' runs end with it."""
        return []

    def submit_many(self, jobs: Sequence[Job]) -> list[Future]:
        """With several runs at once each job's output goes to its (first) run's log.txt."""
        futures = []
        for job in jobs:
            log = job.folder / "log.txt" if self.n_jobs > 1 else None
            future = self.submit(job, log)
            future.note = f"log: {log}" if log else ""  # type: ignore[attr-defined]
            futures.append(future)
        return futures

    # -- the watcher thread ------------------------------------------------------------------------

    def _watch(self) -> None:
        # A hangup is held in this thread, and so in the workers it starts, until they ignore it
        # (Python lets SIGINT through at startup itself: a Ctrl-C in a worker's first second still
        # reaches it, at the moment the driver stops anyway). The driver's main thread gets both.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            while not self._closing:
                self._dispatch()
                ready = wait_ready([self._wake_r, *(w.conn for w in self._workers),
                                    *(w.process.sentinel for w in self._workers)], timeout=SAMPLE_S)
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                for worker in list(self._workers):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._hear(worker)
                for worker in self._workers:
                    if worker.task is not None:
                        worker.peak_rss = _peak_rss(worker.process.pid) or worker.peak_rss
        except BaseException as e:  # never leave a future unresolved: the driver would wait on it forever
            say(f"lorasweep: the thread watching the workers failed: {type(e).__name__}: {e}")
            with self._lock:
                self._closing = True  # no more submits: nothing would run them
                for future in self._futures:
                    if not future.done():
                        future.set_exception(e)
        finally:
            self._stopped_watching.set()
            # Linux sends a worker its PR_SET_PDEATHSIG (executors/worker.die_with_parent) when the
            # *thread* that started it ends: this one, so it outlives the workers
            self._all_gone.wait()

    def _dispatch(self) -> None:
        """Queued runs to idle workers, starting workers (up to n_jobs) as needed."""
        with self._lock:
            while self._queue and not self._closing:
                worker = next((w for w in self._workers if w.task is None), None)
                if worker is None:
                    if len(self._workers) >= self.n_jobs:
                        return
                    worker = _Worker(self._context, self.threads, self._free_gpus())
                    self._workers.append(worker)
                task = self._queue.popleft()
                if task.future.set_running_or_notify_cancel():  # else cancelled while queued
                    worker.give(task)

    def _free_gpus(self) -> str | None:
        """The GPUs of a slot no live worker holds (a dead worker's replacement takes its slot)."""
        if self.gpus is None:
            return None
        free = list(self.gpus)
        for worker in self._workers:
            free.remove(worker.gpus)
        return free[0]

    def _hear(self, worker: _Worker) -> None:
        """Its answers (a result, a failure), or its death."""
        ended = False
        while worker.conn.poll():
            try:
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):
                ended = True
                break
            self._settle(worker, data)
        if not ended and worker.process.exitcode is None:
            return
        worker.process.join(5)
        if worker.process.exitcode is None:  # its pipe closed but it lingers
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        self._workers.remove(worker)
        if worker.task is not None:
            self._lost(worker.task, worker.process.exitcode, worker.peak_rss)

    def _settle(self, worker: _Worker, data: bytes) -> None:
        task, worker.task = worker.task, None
        try:
            kind, task_id, *payload = pickle.loads(data)
        except Exception as e:  # an exception class the driver cannot rebuild, say
            kind, task_id, payload = "error", task.id if task else None, [e, ""]
        if task is None or task.id != task_id:
            return
        if kind == "result":
            task.future.set_result(payload[0])
        else:
            task.future.set_exception(with_remote_traceback(*payload))

    def _lost(self, task: _Task, exitcode: int, peak_rss: int | None) -> None:
        """The runs of a worker that died: each one's result if it wrote one first, "claimed" if another
        live process has claimed it since (its driver waits for it), else failed with the cause (a
        SIGTERM from elsewhere stopped it cleanly: nothing recorded, it trains again next time)."""
        if exitcode == STOPPED_EXIT:
            outcomes = [self._left_by_stopped(cfg, task.given_at) for cfg in task.job.configs]
        else:
            reason = death_reason(exitcode, peak_rss)
            outcomes = [self._record_death(cfg, reason, peak_rss, task.given_at) for cfg in task.job.configs]
        if task.job.is_pack:  # each with its run key: the driver matches them to its runs by key
            keys = [run_key_of(folder) for folder in task.job.folders]
            task.future.set_result({PACK: [{"run_key": key, **outcome} for key, outcome in zip(keys, outcomes)]})
        elif "died" in outcomes[0]:
            task.future.set_exception(WorkerDiedError(outcomes[0]["died"]))
        else:
            task.future.set_result(outcomes[0])  # it wrote its result just before it died, or another has it

    @staticmethod
    def _record_death(cfg: dict, reason: str, peak_rss: int | None, since: float) -> dict:
        """The run's result if it finished before its worker died, {"claimed_by"} if another process
        has claimed it since, else {"died": the reason it failed} (recorded): its own reason when it
        recorded its failure just before the death (out of accelerator memory, say), with the death."""
        try:
            from ..run.records import record_worker_death

            record = record_worker_death(cfg, reason, round(peak_rss / 2**20, 1) if peak_rss else None, since)
        except Exception as e:  # recording it failed too (a full disk): the cause is still said
            return {"died": reason + f" (its failure could not be recorded: {type(e).__name__}: {e})"}
        if record.get("status") != "failed":
            return record
        own = record.get("reason")  # the run's own, kept, unless record_worker_death wrote `reason` itself
        return {"died": reason if own == reason else f"{own}; its worker then died: {reason}"}

    @staticmethod
    def _left_by_stopped(cfg: dict, since: float) -> dict:
        """A run whose worker a SIGTERM from elsewhere stopped: what it left (its result, written
        since it was given: diverged or pruned in a pack; another process's claim), else {"died"}."""
        try:
            from ..run.records import left_by_worker

            left = left_by_worker(cfg, since)
        except Exception:  # its folder cannot be read: said as stopped, which it was
            left = None
        return left or {"died": "worker stopped by SIGTERM before the run finished; it left no result"}

    # -- the end ------------------------------------------------------------------------------------

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the runs in flight, or (cancel) drop queued runs and stop the running ones now:
        SIGTERM, then SIGKILL at a second Ctrl-C or after GRACE_S. An interrupted run leaves no
        result and runs again next time."""
        if self._shut:
            return
        self._shut = True
        if not cancel:
            with self._lock:
                pending = list(self._futures)
            wait_futures(pending)
        with self._lock:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
        self._wake_w.send_bytes(b"")
        try:
            self._stopped_watching.wait()
            for task in queued:
                task.future.cancel()
            busy = [w for w in self._workers if w.task is not None]
            if cancel:
                self._stop(busy)
            else:
                self._release()
            for worker in busy:
                if not worker.task.future.done():
                    worker.task.future.set_exception(Stopped())
        finally:
            _kill_workers(self._workers)  # whatever happened above, none is left behind
            self._all_gone.set()
        self._watcher.join()
        for conn in (self._wake_r, self._wake_w, *(w.conn for w in self._workers)):
            conn.close()
        self._workers.clear()

    def _stop(self, busy: list[_Worker]) -> None:
        # the second Ctrl-C may come as soon as the first line is out: the try holds from before it
        try:
            if busy:
                say(f"sweep interrupted: stopping {len(busy)} run{'s' if len(busy) != 1 else ''} in flight "
                    f"(Ctrl-C again to kill {'them' if len(busy) != 1 else 'it'} now)")
            for worker in self._workers:
                worker.process.terminate()
            deadline = time.monotonic() + GRACE_S
            for worker in self._workers:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            late = [w for w in self._workers if w.process.exitcode is None]
            if late:
                say(f"{len(late)} worker{'s' if len(late) != 1 else ''} still running {GRACE_S}s after SIGTERM: killed")
        except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM, SIGHUP to the driver): now
            late = [w for w in self._workers if w.process.exitcode is None]
            if late:
                say(f"interrupted again: killing {len(late)} worker{'s' if len(late) != 1 else ''} now")
        finally:
            _kill_workers(self._workers)

    def _release(self) -> None:
        """Idle workers are told to end, and given GRACE_S to do it."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        _kill_workers(self._workers)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.shutdown(cancel=exc_type is not None)


def _peak_rss(pid: int) -> int | None:
    """The process's peak resident set size in bytes (Linux: VmHWM), else its RSS now (psutil)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # gone already, or no psutil
        return None


def _kill_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.exitcode is None:
            worker.process.kill()
    for worker in workers:
        worker.process.join()
