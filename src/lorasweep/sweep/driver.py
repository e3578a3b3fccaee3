"""The driver: the one loop that hands a sweep's runs to an executor, for the grid and the Optuna study.

It owns all that is the same for both: the units in flight (a unit: one run, or a pack of runs,
sweep/packs), at most `executor.n_jobs` of them; each run's own outcome out of its unit's
(packs.per_run); a failed run run again up to `retries` times; a run another process trains now
(its claim is live, run/claims), waited for and polled every WAIT_POLL_S until its result lands or
its claim goes without one (then it trains here); a store fault that every later run would hit
(no space left, a read-only store), after which nothing new starts; the cluster refusing the runs
(exit 2); an interrupt (the executor stops its runs; exit 130). Once its workers have ended, the
claims they left on its runs are deleted: a worker killed outright leaves its claim, and so does one
whose store was read-only for the moment its run ended (its result written, the claim not deleted).

What differs is the source's (sweep/grid.GridSource, sweep/optuna_study.OptunaSweep): which units
run next (`next_units`) and what an outcome means (`record`: the grid counts it, the study tells
Optuna), with the lines each says.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..console import say
from ..errors import StoreError, SubmissionError, SweepExit
from ..executors.interface import Executor
from ..executors.worker import claimed_by
from ..run.claims import WAIT_POLL_S, drop_dead_claim
from ..run.store import run_key_of
from .packs import per_run, to_resend, unit_job
from .triage import after_wait

# What became of a run (Outcome.kind), for its source to record and say
FINISHED = "finished"  # its task ended: `future` holds its result or its exception
RETRYING = "retrying"  # it failed (`future`) and is sent again (its `attempt` counts up)
WAITING = "waiting"    # another process claimed it after our triage (`holder`): waited for
LANDED = "landed"      # waited for, it has a result now (`verdict`: done | diverged | failed; `stored`)
HERE = "here"          # waited for, its claim went without a result: it trains here after all


class Run(Protocol):
    """What the driver reads and keeps of a run (the grid's SweepJob, the study's TrialRun)."""

    cfg: dict
    folder: Path
    before: dict | None  # its stored result at triage: tells a new failure from an earlier sweep's
    attempt: int         # 1, then 2 and more when retried
    started: float       # perf_counter when last sent
    reports_to: dict | None  # the Optuna trial its evaluations go to (executors/job.Job.trials)


@dataclass(frozen=True)
class Outcome:
    kind: str
    future: Future | None = None
    holder: str = ""
    verdict: str = ""
    stored: dict | None = None


class Source(Protocol):
    """A sweep's side of the driver: what runs next, and what an outcome means."""

    @property
    def halted(self) -> bool:
        """No more runs are asked for (and no failed one retried): e.g. too many trials failed."""

    def next_units(self, driver: Driver, room: int) -> list[list[Run]]:
        """The units to send next (about `room` of them; [] when there is nothing more now)."""

    def sent(self, unit: list[Run], future: Future, verb: str, again: bool) -> None:
        """Say that `unit` was sent (`again`: a retry, or a resend to the job that holds it)."""

    def record(self, run: Run, outcome: Outcome) -> None:
        """Record and say what became of `run`."""

    def not_started(self, error: StoreError, runs: list[Run]) -> None:
        """`runs` will not start: a store fault every later run would hit (`error`)."""

    def task_done(self, driver: Driver) -> None:
        """A unit's task ended and each of its runs was recorded (say the progress)."""

    def interrupted(self, in_flight: list[str]) -> None:
        """The sweep was interrupted; `in_flight`: the jobs that go on without it (SLURM's)."""


class Driver:
    """`Driver(executor, source, retries).drive()` runs the sweep to its end; raises SweepExit for
    the cluster refusing the runs (2) and an interrupt (130)."""

    def __init__(self, executor: Executor, source: Source, retries: int = 0) -> None:
        self.executor, self.source, self.retries = executor, source, retries
        self.queue: list[tuple[list[Run], bool]] = []  # units to send, each with `again` (Source.sent)
        self.running: dict[Future, list[Run]] = {}  # a task in flight -> its runs
        self.waiting: list[Run] = []  # runs another process trains now
        self.durations: list[float] = []  # of the tasks ended here: for an ETA
        self.stopped: StoreError | None = None  # the store fault that stops the sweep
        self.sent: set[Path] = set()  # the folders of the runs sent, whose claims are ours to tidy at the end

    def drive(self) -> None:
        try:
            while True:
                self._fill()
                if not (self.running or self.waiting or self.queue):
                    return
                for task in self._next_finished():
                    self._settle(task)
                self._poll_waiting()
        except SubmissionError as e:  # before anything waited: the cluster settings are wrong
            self._shutdown()  # first: the cluster's error is the last line
            say(f"sweep: the cluster refused the runs: {e}")
            raise SweepExit(2) from None
        except KeyboardInterrupt:  # the executor stops the runs in flight (local workers) first
            self._shutdown()
            self.source.interrupted(self.executor.in_flight())
            raise SweepExit(130) from None
        finally:
            try:
                self._shutdown()
            except KeyboardInterrupt:  # every run had ended: only idle workers were let go, and the executor killed them
                say("sweep: interrupted while its idle workers ended; every run had ended, nothing was lost")
            self._drop_dead_claims()

    def await_claim(self, run: Run) -> bool:
        """A run another process trains now: waited for (True), unless it is a job of our own
        executor's still running (a restarted SLURM driver's), which submit_many re-attaches to."""
        if self.executor.follows(run.folder):
            return False
        self.waiting.append(run)
        return True

    def left(self) -> tuple[int, float]:
        """Runs not finished yet (queued, in flight, waited for), and the seconds they should take."""
        units = [unit for unit, _ in self.queue] + list(self.running.values()) + [[run] for run in self.waiting]
        tasks = len(units)
        eta = sum(self.durations) / max(1, len(self.durations)) * tasks / max(1, min(self.executor.n_jobs, tasks))
        return sum(map(len, units)), eta

    def _fill(self) -> None:
        """Send what starts now: queued units first (retries, resends), then the source's next."""
        while (room := self.executor.n_jobs - len(self.running)) > 0:
            if self.stopped is None and not self.source.halted and len(self.queue) < room:
                self.queue += [(unit, False) for unit in self.source.next_units(self, room - len(self.queue))]
            batch, self.queue = self.queue[:room], self.queue[room:]
            if not batch:
                return
            futures = self.executor.submit_many([unit_job(unit) for unit, _ in batch])  # one array on SLURM
            for (unit, again), future in zip(batch, futures):
                for run in unit:
                    run.started = time.perf_counter()
                    self.sent.add(run.folder)
                self.running[future] = unit
                self.source.sent(unit, future, self.executor.verb, again)

    def _next_finished(self) -> set[Future]:
        """The tasks that ended, waiting for one at least; back within WAIT_POLL_S anyway while runs
        trained elsewhere are waited for."""
        if not self.running:
            time.sleep(WAIT_POLL_S)
            return set()
        finished, _ = wait(self.running, timeout=WAIT_POLL_S if self.waiting else None, return_when=FIRST_COMPLETED)
        return finished

    def _settle(self, task: Future) -> None:
        unit = self.running.pop(task)
        self.durations.append(time.perf_counter() - unit[0].started)
        for run, future in zip(unit, per_run(task, [run_key_of(run.folder) for run in unit])):
            self._outcome(run, future)
        if self.stopped is not None and self.queue:  # they would each load a model only to fail the same way
            dropped = [run for unit, _ in self.queue for run in unit]
            self.queue = []
            self.source.not_started(self.stopped, dropped)
        self.source.task_done(self)

    def _outcome(self, run: Run, future: Future) -> None:
        """One run's outcome: sent again, waited for, retried, or recorded."""
        if to_resend(future):  # not in the job its regrouped pack was re-attached to
            self.queue.insert(0, ([run], True))  # alone: it trains, or re-attaches to the job that holds it
            return
        holder = claimed_by(future)
        if holder:  # another process claimed it after our triage: waited for, like the others
            self.waiting.append(run)
            self.source.record(run, Outcome(WAITING, holder=holder))
            return
        error = future.exception()
        if self._retrying(run, error):
            self.source.record(run, Outcome(RETRYING, future))
            self.queue.insert(0, ([run], True))
            return
        if isinstance(error, StoreError) and error.whole_store and self.stopped is None:
            self.stopped = error
        self.source.record(run, Outcome(FINISHED, future))

    def _retrying(self, run: Run, error: BaseException | None) -> bool:
        """Whether a failed run is run again (hydra.launcher.retries). Results (diverged, pruned, over
        budget) never are, nor a run the store refused: the next would fail the same way."""
        if (error is None or isinstance(error, StoreError) or self.stopped is not None or self.source.halted
                or run.attempt > self.retries):
            return False
        run.attempt += 1
        return True

    def _poll_waiting(self) -> None:
        """The runs trained elsewhere whose result has landed are recorded; a run whose claim went
        without a result (interrupted, its owner dead) is queued to train here."""
        for run in list(self.waiting):
            verdict, stored = after_wait(run.cfg, run.before)
            if verdict == "claimed":
                continue
            self.waiting.remove(run)
            if verdict == "train":
                self.source.record(run, Outcome(HERE))
                self.queue.append(([run], False))
            else:
                self.source.record(run, Outcome(LANDED, verdict=verdict, stored=stored))

    def _shutdown(self) -> None:
        self.executor.shutdown(cancel=bool(self.running))

    def _drop_dead_claims(self) -> None:
        """Delete the claims whose owners are gone on the runs this sweep sent (its workers' claims,
        once they have ended; claims of live processes and of other hosts' stay). A store that still
        refuses keeps them: the next trainer takes them over, the next triage of a finished run drops it."""
        for folder in self.sent:
            try:
                drop_dead_claim(folder)
            except OSError:
                return
