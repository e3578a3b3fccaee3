"""A grid sweep: plan every run, train the missing ones in worker processes or as SLURM jobs.

Prints "run i/N" lines as runs start and finish and a summary at the end (done, already done,
over budget, failed, best so far). Interrupted (Ctrl-C, kill), it stops its workers; finished runs
keep their results and the same command later trains only what is missing.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Callable, Sequence

from hydra.core.utils import JobReturn, JobStatus

from . import results
from .cli import USER_ERRORS
from .executor import LocalExecutor, SubmissionError
from .metrics import headline
from .planning import plan_run
from .run import execute
from .sweep_jobs import JobConfigs, SweepTally, varying_overrides


def run_sweep(config_loader, sweep_config, job_overrides: Sequence[Sequence[str]], n_jobs: int = 1,
              threads: int | None = None, make_executor: Callable | None = None) -> list[JobReturn]:
    """`make_executor()`: where runs train (lorasweep.executor's interface); local workers by default."""
    shared, labels = varying_overrides(job_overrides)
    total = len(job_overrides)
    _say(f"sweep: {total} runs" + (f"; every run: {' '.join(shared)}" if shared else ""))
    tally = SweepTally(total)
    returns: list[JobReturn | None] = [None] * total
    queue = []
    queued: dict[Path, int] = {}  # run folder -> the job that trains it
    configs = JobConfigs(config_loader, sweep_config)
    for i, overrides in enumerate(job_overrides):
        node, cfg = configs(overrides)
        tag = f"run {i + 1}/{total} {labels[i]}"
        try:
            plan = plan_run(cfg)
        except USER_ERRORS as e:
            _finish(returns, tally, i, overrides, node, "invalid", labels[i], line=f"{tag}: invalid: {e}")
            continue
        folder = results.run_dir(cfg.get("results_dir", "results"), plan.spec.slug, plan.spec.run_key)
        stored = results.read_result(folder)
        if stored and stored.get("status") == "done":
            _finish(returns, tally, i, overrides, node, "already done", labels[i], stored,
                    f"{tag}: already done, {_metric(stored)}")
        elif plan.over_budget:
            skipped = execute(plan, Path(cfg.get("results_dir", "results")))  # records it; reads no weight
            _finish(returns, tally, i, overrides, node, "over budget", labels[i], skipped,
                    f"{tag}: over budget, {skipped['reason']}")
        elif folder in queued:  # e.g. method=none x lora.r=4,8: settings the run ignores, one run key
            _finish(returns, tally, i, overrides, node, "same run", labels[i],
                    line=f"{tag}: the same run as run {queued[folder] + 1}/{total} (same run key), trained once")
        else:
            queued[folder] = i
            queue.append((i, overrides, node, cfg, folder))
    if queue:
        _train(queue, returns, tally, labels, total, make_executor or (lambda: LocalExecutor(n_jobs, threads)))
    _say(tally.summary())
    if tally.counts.get("invalid") and not tally.counts.get("failed"):
        # a config mistake was said in one line per run above: exit 2 without a traceback
        raise SystemExit(2)
    return returns  # Hydra raises a failed run's exception (with the worker's traceback) after this


def _train(queue, returns, tally, labels, total, make_executor) -> None:
    running: dict[Future, tuple] = {}
    durations: list[float] = []  # of the runs trained here: for the sweep's ETA
    executor = None
    try:
        with make_executor() as executor:
            while queue or running:
                batch = queue[:max(0, executor.n_jobs - len(running))]  # submit only what starts now
                del queue[:len(batch)]
                futures = executor.submit_many([(cfg, folder) for _, _, _, cfg, folder in batch]) if batch else []
                for job, future in zip(batch, futures):
                    running[future] = (*job, time.perf_counter())
                    note = getattr(future, "note", "")
                    _say(f"run {job[0] + 1}/{total} {executor.verb}: {labels[job[0]]}" + (f" ({note})" if note else ""))
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    i, overrides, node, cfg, folder, start = running.pop(future)
                    durations.append(time.perf_counter() - start)
                    _collect(future, returns, tally, i, overrides, node, labels[i], total, folder, start)
                    left = len(queue) + len(running)
                    eta = sum(durations) / len(durations) * left / max(1, min(executor.n_jobs, left))
                    _say(f"  {tally.finished}/{total} finished, best so far: {tally.best_line()}"
                         + (f"; ETA {eta / 60:.1f} min for {left} more" if left else ""))
    except SubmissionError as e:  # before anything waited: the cluster settings are wrong
        _say(f"sweep: the cluster refused the runs: {e}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        away = executor.in_flight() if hasattr(executor, "in_flight") else []
        _say(f"sweep interrupted: {tally.finished} of {total} runs finished and kept; "
             + (f"{len(away)} runs go on as SLURM jobs; run the same command again to collect them "
                "and submit the rest" if away else "run the same command again to train the rest"))
        raise SystemExit(130) from None


def _collect(future, returns, tally, i, overrides, node, label, total, folder, start) -> None:
    tag = f"run {i + 1}/{total} {label}"
    elapsed = f"{time.perf_counter() - start:.0f}s"
    try:
        result = future.result()
    except Exception as e:  # the run recorded itself as failed; the sweep goes on
        _finish(returns, tally, i, overrides, node, "failed", label, error=e,
                line=f"{tag}: FAILED after {elapsed}: {type(e).__name__}: {e} (see {folder / 'traceback.txt'})")
        return
    outcome = {"done": "done", "pruned": "pruned", "skipped_budget": "over budget"}[result["status"]]
    _finish(returns, tally, i, overrides, node, outcome, label, result,
            f"{tag}: {outcome}, {_metric(result)}, {elapsed}")


def _finish(returns, tally, i, overrides, node, outcome, label, result=None, line="", error=None) -> None:
    tally.add(outcome, label, result)
    _say(line)
    value = ((result or {}).get("objective") or {}).get("value")
    returns[i] = JobReturn(overrides=list(overrides), cfg=node, task_name="lorasweep",
                           status=JobStatus.FAILED if error else JobStatus.COMPLETED,
                           _return_value=error if error else value)


def _metric(result: dict) -> str:
    test = (result.get("metrics") or {}).get("test")
    trainable = (result.get("params") or {}).get("trainable")
    text = headline(test) if test else result.get("reason", "")
    return text + (f", {trainable:,} trainable" if trainable is not None else "")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
