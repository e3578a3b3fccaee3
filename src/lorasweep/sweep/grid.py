"""A grid sweep: triage every run, train the rest through an executor (local workers or SLURM jobs).

Prints "run i/N" lines as runs start and finish and a summary at the end (done, already done,
diverged, over budget, failed, best so far). A diverged run (its training loss became NaN or
infinite) is a result, not a failure: it is counted, never retrained, and the exit status stays 0.
Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops its workers (the executor: SIGTERM, so that each
run ends cleanly and writes no result; a second Ctrl-C kills them) and exits 130; finished runs
keep their results and the same command later trains only what is missing.

A run whose worker process dies under it (the out-of-memory killer's SIGKILL) is a failed run like
another, with the signal as its cause; the other runs go on. With hydra.launcher.retries=N a failed
run is run again, up to N more times, within the sweep (each time said in its line); a diverged or
over-budget run is a result and never retried, and a store fault is not either. A sweep with failed
runs exits 1 at the end; a later command trains them again.

The store's faults: a results_dir that cannot be written stops the sweep before anything trains
(exit 2); a run that fails because the store refused a write stops the sweep when every later run
would fail the same way (no space left, a read-only store): the runs not started are said, and the
sweep exits 1 with no traceback; a stored result.json that cannot be read is said and trained again.
A run out of accelerator memory is a failure said in one line (what drives memory); the sweep goes on
in the same workers (the run gave its memory back).

Several drivers may share one store: a run another process trains now (its claim is live,
lorasweep.run.claims) is waited for, not trained twice; its result is reported when it lands
("trained elsewhere"), and if its claim goes without one (interrupted, its owner dead) it trains here.
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from ..config.checks import DATA_PARALLEL
from ..console import say
from ..errors import SAID_IN_FULL, ConfigError, StoreError, SweepExit, UnwritableStoreError, WorkerDiedError, cause
from ..executors.factory import check_retries
from ..executors.interface import Executor
from ..run.store import TRACEBACK_FILE, store_dir
from ..tasks.metrics import headline
from .compose import JobConfigs, varying_overrides
from .driver import FINISHED, HERE, LANDED, RETRYING, WAITING, Driver, Outcome
from .interrupts import interrupt_on_signals
from .pack_auto import AutoSplit
from .packs import AUTO, check_pack_gpus, make_packs, pack_size
from .predicted import Where, run_cost, too_big
from .triage import triage



@dataclass
class SweepJob:
    """One run of the sweep: where it stands in the grid and what trains it."""

    index: int                     # 0-based position in the grid
    overrides: Sequence[str]       # its command-line overrides (Hydra's JobReturn wants them back)
    node: DictConfig               # its composed config, hydra node included
    cfg: dict[str, Any]            # the plain config a worker runs
    label: str                     # what differs from the other runs, e.g. "lora.r=4 lora.proj=qk"
    total: int                     # runs in the sweep
    folder: Path | None = None     # its folder in the results store
    started: float = 0.0           # perf_counter when sent
    attempt: int = 1               # 2 and more: retried (hydra.launcher.retries)
    before: dict | None = None     # its stored result at triage (a failed one from an earlier sweep, say)
    plan: Any = None               # its plan (run/plan.Plan) at triage: pack=auto predicts its cost
    reports_to: None = None        # no Optuna trial (sweep/driver.Run)

    @property
    def tag(self) -> str:
        return f"run {self.index + 1}/{self.total} {self.label}"


@dataclass
class SweepTally:
    """Counts by outcome, the best run so far (by its objective), and Hydra's return per job."""

    total: int
    counts: dict[str, int] = field(default_factory=dict)
    best: tuple[float, str, dict] | None = None  # (objective value, label, result)
    returns: list[JobReturn | None] = field(init=False)
    store_failed: bool = False  # a run failed on a store fault: said in its line, no traceback after
    raised: int = 0  # failed runs whose own exception (with its traceback) Hydra shows after the sweep

    def __post_init__(self) -> None:
        self.returns = [None] * self.total

    def record(self, job: SweepJob, outcome: str, line: str, result: dict | None = None,
               error: BaseException | None = None) -> None:
        """Count the job's outcome, say its line, and keep its return for Hydra."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        objective = (result or {}).get("objective") or {}
        value = objective.get("value")
        if value is not None:
            sign = 1 if objective.get("direction", "maximize") == "maximize" else -1
            if self.best is None or sign * value > sign * self.best[0]:
                self.best = (value, job.label, result)
        say(line)
        # Hydra raises the first FAILED return's exception after the sweep: only a run's own exception,
        # never one said in full in its line above (it would hide the traceback that explains another run)
        raises = error is not None and not isinstance(error, SAID_IN_FULL)
        self.returns[job.index] = JobReturn(overrides=list(job.overrides), cfg=job.node, task_name="lorasweep",
                                            status=JobStatus.FAILED if raises else JobStatus.COMPLETED,
                                            _return_value=error if raises else value)

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def best_line(self) -> str:
        if self.best is None:
            return "no finished run yet"
        value, label, result = self.best
        se = ((result.get("metrics") or {}).get("test") or {}).get("accuracy_se")
        return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "") + f" ({label})"

    def summary(self) -> str:
        order = ("done", "trained elsewhere", "already done", "diverged", "already diverged", "same run",
                 "over budget", "pruned", "failed", "not started", "invalid")
        parts = [f"{self.counts[k]} {k}" for k in (*order, *sorted(set(self.counts) - set(order)))
                 if self.counts.get(k)]
        return f"sweep: {self.total} runs: {', '.join(parts) or 'none finished'}; best: {self.best_line()}"


def sweep_grid(config_loader, sweep_config: DictConfig, job_overrides: Sequence[Sequence[str]],
               open_executor: Callable[[], Executor], retries: Any = 0, pack: Any = None,
               gpus_per_run: int = 1, where: Where | None = None) -> list[JobReturn]:
    """Run a grid's jobs; `open_executor()` gives where they train (lorasweep.executors); a failed
    run is run again up to `retries` more times (hydra.launcher.retries); `pack` (hydra.launcher.pack):
    compatible runs train together over one base (sweep/packs); `gpus_per_run` > 1
    (hydra.launcher.gpus_per_run, checked by the launcher): each run trains data-parallel on that many
    GPUs (executors/data_parallel), which each run's triage checks it can. `where`: where the
    launcher trains (sweep/predicted): a run predicted not to fit its GPU's memory is refused before
    anything trains. Ends with SweepExit where the exit status is not 0 (each reason said in its line)."""
    try:
        retries = check_retries(retries)
        pack = pack_size(pack)
        check_pack_gpus(pack, gpus_per_run)
    except ConfigError as e:
        say(f"sweep: {e}; nothing was trained")
        raise SweepExit(2) from None
    interrupt_on_signals()  # kill, a closed terminal: handled as Ctrl-C
    shared, labels = varying_overrides(job_overrides)
    total = len(job_overrides)
    say(f"sweep: {total} runs" + (f"; every run: {' '.join(shared)}" if shared else ""))
    source = GridSource(SweepTally(total), retries, pack, where)
    configs = JobConfigs(config_loader, sweep_config)
    for i, overrides in enumerate(job_overrides):
        node, cfg = configs(overrides)
        if gpus_per_run > 1:
            cfg[DATA_PARALLEL] = gpus_per_run
        source.triage(SweepJob(i, overrides, node, cfg, labels[i], total))
    tally = source.tally
    problems = too_big([(job.label, job.cfg) for job in source.queue], where) if where is not None else []
    for problem in problems:  # before any run starts: the cluster (or this machine) would kill it later
        say(f"sweep: {problem}")
    if problems:
        say(f"sweep: {len(problems)} run{'s' if len(problems) != 1 else ''} would not fit the GPU; nothing was started")
        raise SweepExit(2)
    if source.queue or source.elsewhere:
        with open_executor() as executor:
            Driver(executor, source, retries).drive()
    say(tally.summary())
    if tally.store_failed:  # said in one line per run (and why the sweep stopped): no traceback from Hydra
        raise SweepExit(1)
    if tally.counts.get("failed") and not tally.raised:  # each said in full in its line (SAID_IN_FULL)
        raise SweepExit(1)
    if tally.counts.get("invalid") and not tally.counts.get("failed"):
        # a config mistake was said in one line per run above: exit 2 without a traceback
        raise SweepExit(2)
    return tally.returns  # Hydra raises a failed run's exception (with the worker's traceback) after this


class GridSource:
    """The grid's side of the driver (sweep/driver.Source): its runs, known before any trains, sent
    once in packs or alone; each outcome counted in the tally and said in its run's line."""

    halted = False  # a grid stops only on a store fault: the driver's

    def __init__(self, tally: SweepTally, retries: int, pack: int | str | None, where: Where | None = None) -> None:
        self.tally, self.retries, self.pack, self.where = tally, retries, pack, where
        self.queue: list[SweepJob] = []
        self.queued: dict[Path, SweepJob] = {}  # run folder -> the job that trains it
        self.elsewhere: list[SweepJob] = []  # runs another process trains now

    def triage(self, job: SweepJob) -> None:
        """Decide the job: recorded now (invalid, done, over budget, the same run as another), waited
        for (another process trains it) or queued."""
        tally, total = self.tally, job.total
        try:
            decision = triage(job.cfg)
        except UnwritableStoreError as e:  # before anything trained: the same for every run, said once
            say(f"sweep: {e}; nothing was trained")
            raise SweepExit(2) from None
        except StoreError as e:  # recording an over-budget run: the store refused the write
            say(f"sweep: {e}; stopped")
            raise SweepExit(1) from None
        job.folder, job.before, job.plan = decision.folder, decision.stored, decision.plan
        if decision.unreadable and decision.verdict == "train" and decision.folder not in self.queued:
            say(f"{job.tag}: {decision.unreadable}, training it again")
        if decision.verdict == "invalid":
            tally.record(job, "invalid", f"{job.tag}: invalid: {decision.error}")
        elif decision.verdict == "done":
            tally.record(job, "already done", f"{job.tag}: already done, {_metric(decision.stored)}", decision.stored)
        elif decision.verdict == "diverged":
            tally.record(job, "already diverged", f"{job.tag}: already diverged, {decision.stored.get('reason', '')}",
                         decision.stored)
        elif decision.verdict == "over_budget":
            tally.record(job, "over budget", f"{job.tag}: over budget, {decision.stored['reason']}", decision.stored)
        elif decision.verdict == "claimed":  # another driver trains it now: its result is ours when it lands
            say(f"{job.tag}: being trained by {decision.holder}; waiting for its result")
            self.elsewhere.append(job)
        elif decision.folder in self.queued:  # e.g. method=none x lora.r=4,8: settings the run ignores, one run key
            first = self.queued[decision.folder]
            tally.record(job, "same run", f"{job.tag}: the same run as run {first.index + 1}/{total} "
                                          f"(same run key), trained once")
        else:
            self.queued[decision.folder] = job
            self.queue.append(job)

    def next_units(self, driver: Driver, room: int) -> list[list[SweepJob]]:
        """Every queued run, once: in packs or alone; a run claimed elsewhere that is our own job
        still running (a restarted SLURM driver) joins them, the others are waited for."""
        queue = self.queue + [job for job in self.elsewhere if not driver.await_claim(job)]
        self.queue, self.elsewhere = [], []
        split = None
        if self.pack == AUTO:
            where = self.where or Where(n_jobs=driver.executor.pack_spread)
            split = AutoSplit(lambda job: run_cost(job.plan, store_dir(job.cfg), where), lambda job: job.cfg, where)
        units = make_packs(queue, lambda job: job.cfg, self.pack, driver.executor.pack_spread, split)
        for line in split.lines if split else ():
            say(f"sweep: {line}")
        return units

    def sent(self, unit: list[SweepJob], future: Future, verb: str, again: bool) -> None:
        note = getattr(future, "note", "")
        note = f" ({note})" if note else ""
        if len(unit) == 1:
            job = unit[0]
            say(f"run {job.index + 1}/{job.total} {verb}: {job.label}{note}")
            return
        say(f"pack of {len(unit)} runs {verb}{note}: "
            + "; ".join(f"run {j.index + 1}/{j.total} {j.label}" for j in unit))

    def record(self, job: SweepJob, outcome: Outcome) -> None:
        if outcome.kind == WAITING:
            say(f"{job.tag}: being trained by {outcome.holder}; waiting for its result")
        elif outcome.kind == RETRYING:
            say(f"{job.tag}: FAILED after {time.perf_counter() - job.started:.0f}s: "
                f"{_failure(outcome.future.exception(), job)}; retrying (attempt {job.attempt} of {self.retries + 1})")
        elif outcome.kind == FINISHED:
            _collect(outcome.future, job, self.tally)
        elif outcome.kind == LANDED:
            _landed(job, outcome.verdict, outcome.stored, self.tally)
        elif outcome.kind == HERE:
            say(f"{job.tag}: its trainer stopped without a result; training it here")

    def not_started(self, error: StoreError, runs: list[SweepJob]) -> None:
        """No run is started after a store fault that every later run would hit (no space left, a
        read-only store): they would each load a model and train only to fail on the same write."""
        n = len(runs)
        say(f"sweep: stopped: {error.cause}; the {n} run{'s' if n != 1 else ''} not started would fail the same "
            f"way; {'free space' if error.no_space else 'fix the results store'} and run the same command again "
            f"to train them")
        self.tally.counts["not started"] = self.tally.counts.get("not started", 0) + n

    def task_done(self, driver: Driver) -> None:
        left, eta = driver.left()
        say(f"  {self.tally.finished}/{self.tally.total} finished, best so far: {self.tally.best_line()}"
            + (f"; ETA {eta / 60:.1f} min for {left} more" if left else ""))

    def interrupted(self, in_flight: list[str]) -> None:
        tally = self.tally
        say(f"sweep interrupted: {tally.finished} of {tally.total} runs finished and kept; "
            + (f"{len(in_flight)} runs go on as SLURM jobs; run the same command again to collect them "
               "and submit the rest" if in_flight else "run the same command again to train the rest"))


def _landed(job: SweepJob, verdict: str, stored: dict, tally: SweepTally) -> None:
    """A run trained elsewhere, whose result has landed."""
    if verdict == "diverged":
        tally.record(job, "diverged", f"{job.tag}: diverged elsewhere, {stored.get('reason', '')}", stored)
    elif verdict == "done":
        tally.record(job, "trained elsewhere", f"{job.tag}: trained elsewhere, {_metric(stored)}", stored)
    else:  # failed
        reason = stored.get("reason", "")
        tally.record(job, "failed", f"{job.tag}: FAILED elsewhere: {reason} (see {job.folder})",
                     error=RuntimeError(reason))


def _failure(error: BaseException, job: SweepJob) -> str:
    """What a failed run's line says after 'FAILED after Ns: '."""
    if isinstance(error, (StoreError, WorkerDiedError)):  # the path and the cause; the signal and the peak RSS
        return str(error)  # and no traceback.txt to point to
    traceback = job.folder / TRACEBACK_FILE
    # a failure the run could not record (its model cannot be had here) has none either
    return f"{cause(error)} (see {traceback})" if traceback.exists() else cause(error)


def _collect(future: Future, job: SweepJob, tally: SweepTally) -> None:
    elapsed = f"{time.perf_counter() - job.started:.0f}s"
    try:
        result = future.result()
    except StoreError as e:  # the store refused a write: one line with the path and the cause
        tally.store_failed = True
        tally.record(job, "failed", f"{job.tag}: FAILED after {elapsed}: {e}", error=e)
        return
    except Exception as e:  # the run recorded itself as failed (its driver did, for a killed worker); the sweep goes on
        tally.raised += not isinstance(e, SAID_IN_FULL)
        tally.record(job, "failed", f"{job.tag}: FAILED after {elapsed}: {_failure(e, job)}", error=e)
        return
    status = result.get("status")
    if status == "diverged":
        step = (result.get("divergence") or {}).get("step", "?")
        tally.record(job, "diverged", f"{job.tag}: diverged at step {step}, {result.get('reason', '')}, {elapsed}",
                     result)
        return
    # a status this driver does not know is said as it is, never a KeyError
    outcome = {"done": "done", "pruned": "pruned", "skipped_budget": "over budget"}.get(status, str(status))
    tally.record(job, outcome, f"{job.tag}: {outcome}, {_metric(result)}, {elapsed}", result)


def _metric(result: dict) -> str:
    test = (result.get("metrics") or {}).get("test")
    trainable = (result.get("params") or {}).get("trainable")
    text = headline(test) if test else result.get("reason", "")
    return text + (f", {trainable:,} trainable" if trainable is not None else "")
