"""A run's result records: what each status writes into the run's folder, and who may write it.

The run's lifecycle (run/lifecycle.py), a pack (run/pack.py) and a sweep's driver recording a dead
worker's run (executors/local.py) all write results through here, so that a record says the same
whoever writes it: `base_record` (what every result holds), then done, pruned, diverged, failed
(with traceback.txt), skipped_budget. A process that has lost its claim on a run (claims.taken_from_us)
writes nothing more into its folder (`still_ours`): the new owner's files stand.
"""
from __future__ import annotations

import contextlib
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from ..config.spec import PISSA_INIT
from ..console import say
from ..errors import RunClaimedError, StoreError, UnreadableResultError
from . import store
from .claims import Claim, drop_dead_claim, live_holder, taken_from_us
from .plan import Plan, plan_run


TRAINER_DIR = "trainer"  # the Trainer's folder in a run's folder: its checkpoints, kept until the result is written


def base_record(plan: Plan) -> dict[str, Any]:
    """What every result of this run holds, whatever its status."""
    spec = plan.spec
    return {"run_key": spec.run_key, "slug": spec.slug, "config": spec.defining(),
            "budget": {"max_trainable": plan.budget, "r_auto": plan.auto_rank}, "env": store.env_info()}


def done_result(folder: Path, base: dict, task, test: dict, more: dict, outcome, timing: dict, weights: dict,
                artifacts: dict, cost: dict | None = None) -> dict[str, Any]:
    """A run that trained to its end (or has nothing to train: method=none, outcome None), tested on
    `task.test` (`test`) and its other test sets (`more`), saved (`artifacts`); written and returned.
    `weights`: store.weights_memory's figures, beside the process's peak memory. `cost`: its work as
    run/cost counts it ({"work": ...}), which calibrates the next runs' predictions (run/calibration)."""
    metric, direction = task.objective
    return _write_own(folder, {
        **base, "status": "done", "reason": "",
        "metrics": {"test": test, **({"tests": more} if more else {}),
                    **({"train": {"loss": outcome.final_train_loss}} if outcome else {})},
        "objective": {"name": f"test.{metric}", "value": test[metric], "direction": direction},
        "curve": outcome.curve if outcome else [], "timing": timing,
        **({"compile": outcome.compiled} if outcome and outcome.compiled is not None else {}),
        "memory": {**store.peak_memory(), **weights}, **({"cost": cost} if cost else {}), "artifacts": artifacts})


def pruned_result(folder: Path, base: dict, outcome, load_s: float, t_start: float) -> dict[str, Any]:
    """A run the sweeper's pruner stopped: its curve so far, no test evaluation, no adapter."""
    reason = f"stopped by the sweep's pruner at step {outcome.pruned_at}"
    say(f"{base['slug']}: {reason}")
    last = outcome.curve[-1] if outcome.curve else {}
    return _stopped_early(folder, base, outcome, load_s, t_start, status="pruned", reason=reason,
                          metrics={"eval": {k: v for k, v in last.items() if k not in ("step", "epoch", "train_loss")}})


def diverged_result(folder: Path, base: dict, outcome, load_s: float, t_start: float) -> dict[str, Any]:
    """A run whose training loss became NaN or infinite: where, the last finite loss, its curve so far;
    no test evaluation, no adapter."""
    d = outcome.diverged
    say(f"{base['slug']}: diverged: {d.reason}")
    return _stopped_early(folder, base, outcome, load_s, t_start, status="diverged", reason=d.reason,
                          divergence={"step": d.step, "loss": str(d.loss),  # "nan", "inf": JSON has no such number
                                      "last_finite_step": d.last_finite_step, "last_finite_loss": d.last_finite_loss})


def _stopped_early(folder: Path, base: dict, outcome, load_s: float, t_start: float, **fields: Any) -> dict[str, Any]:
    """The result of a run that stopped training before its end (pruned, diverged): its status,
    reason and `fields`, the curve so far and its timing; no test evaluation, no adapter (a PiSSA
    run's initial adapter, kept for converting a trained one, goes too)."""
    still_ours(folder)  # before anything in the folder goes
    shutil.rmtree(folder / PISSA_INIT, ignore_errors=True)
    return _write_own(folder, {**base, **fields, "curve": outcome.curve,
                                       "timing": timing_record(load_s, outcome, 0.0, t_start),
                                       "memory": store.peak_memory()})


def timing_record(load_s: float, outcome, eval_s: float, t_start: float) -> dict[str, float]:
    train_s = outcome.train_seconds if outcome else 0.0
    examples = outcome.examples if outcome else 0
    return {"load_s": round(load_s, 3), "train_s": round(train_s, 3),
            "train_eval_s": round(outcome.eval_seconds, 3) if outcome else 0.0,
            "eval_s": round(eval_s, 3), "total_s": round(time.perf_counter() - t_start, 3),
            "steps": outcome.steps if outcome else 0,
            "train_examples_per_s": round(examples / train_s, 2) if train_s else None}


def record_over_budget(plan: Plan, results_dir: Path) -> dict[str, Any]:
    """A run over its budget is recorded as skipped_budget with its count, never loaded or trained."""
    reason = f"{plan.predicted:,} trainable parameters exceed the budget of {plan.budget:,}"
    say(f"{plan.spec.slug}: skipped, {reason}")
    return store.write_result(plan.folder(results_dir), {
        **base_record(plan), "status": "skipped_budget", "reason": reason,
        "params": {"trainable": plan.predicted, "predicted": plan.predicted}})


def record_failure(folder: Path, base: dict, error: BaseException, t_start: float) -> None:
    """The run failed with `error` in this process: write_failure with its traceback. Called while
    handling the failure (traceback.format_exc)."""
    write_failure(folder, base, f"{type(error).__name__}: {error}", traceback.format_exc(), t_start)


def write_failure(folder: Path, base: dict, reason: str, text: str, t_start: float) -> None:
    """traceback.txt (`text`, when there is one) and a failed result.json saying `reason`, as far as
    the store still takes them: on a full disk either may not fit, and failing to record a failure
    must not hide why the run failed."""
    try:
        if text:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / store.TRACEBACK_FILE).write_text(text)
    except OSError:  # a half-written traceback says less than none
        try:
            (folder / store.TRACEBACK_FILE).unlink(missing_ok=True)
        except OSError:
            pass
    if taken_from_us(folder):  # the run's new owner writes its result: ours would overwrite it
        return
    drop_leftovers(folder)
    try:
        store.write_result(folder, {**base, "status": "failed", "reason": reason,
                                    "timing": {"total_s": time.perf_counter() - t_start}})
    except (OSError, StoreError):
        pass


def drop_leftovers(folder: Path) -> None:
    """What a failed run left that serves only a run that goes on: a PiSSA run's initial adapter (each
    attempt saves it again before it trains) and a trainer/ folder without a checkpoint to resume from
    (the Trainer makes it at the start). Checkpoints stay: the next attempt resumes from them."""
    shutil.rmtree(folder / PISSA_INIT, ignore_errors=True)
    workdir = folder / TRAINER_DIR
    if workdir.is_dir() and not any(workdir.glob("checkpoint-*")):
        shutil.rmtree(workdir, ignore_errors=True)


def record_worker_death(cfg: Mapping[str, Any], reason: str, peak_rss_mb: float | None = None,
                        since: float | None = None) -> dict[str, Any]:
    """A run whose worker process died under it (the out-of-memory killer's SIGKILL, say) is recorded
    by its driver: planned again from its config (nothing loaded), status failed with `reason`, and
    that record returned; unless left_in_folder finds what this attempt of the run left (returned
    instead): a failed result it wrote just before the death keeps its own reason (and traceback),
    which says more than the signal (out of accelerator memory, say). `since`: see left_by_worker."""
    plan = plan_run(cfg)
    folder = plan.folder(store.store_dir(cfg))
    left = left_in_folder(plan, folder, since)
    if left is not None and left.get("status") != "failed":
        return left
    drop_dead_claim(folder)  # the dead worker's: nobody need take it over and say so
    if left is not None:
        return left
    try:  # written under a claim: a process that claimed the run since (free once the dead claim went)
        with Claim(folder):  # trains it, and its result must not be overwritten by this record
            with contextlib.suppress(UnreadableResultError):
                stored = store.read_result(folder)
                if stored and stored.get("status") in store.FINISHED:  # it finished meanwhile
                    return stored
            (folder / store.TRACEBACK_FILE).unlink(missing_ok=True)  # an earlier failure's: this one has none
            return store.write_result(folder, {**base_record(plan), "status": "failed", "reason": reason,
                                               "memory": {"peak_rss_mb": peak_rss_mb, "peak_gpu_mb": None}})
    except RunClaimedError as e:  # another process trains it now: its driver, and ours, wait for its result
        return {"claimed_by": e.holder, "run_key": plan.spec.run_key}


def left_by_worker(cfg: Mapping[str, Any], since: float | None = None) -> dict[str, Any] | None:
    """What a run whose worker process ended under it left (planned again from its config, nothing
    loaded): the result this attempt wrote, {"claimed_by": who, "run_key"} when another process has
    claimed it since (its driver waits for it), else None. `since`: the wall-clock time its worker was
    given the run. A finished result (done, diverged) stands whenever it was written: a finished run
    is never given to a worker, so it finished under this attempt (or another process's, which stands
    too). Any other (pruned, failed) counts only if written at or after `since`: one from before is an
    earlier sweep's or attempt's, not what became of this one (None: none counts)."""
    plan = plan_run(cfg)
    return left_in_folder(plan, plan.folder(store.store_dir(cfg)), since)


def left_in_folder(plan: Plan, folder: Path, since: float | None = None) -> dict[str, Any] | None:
    """left_by_worker for a run already planned, whose folder is `folder`."""
    try:
        stored = store.read_result(folder)
    except UnreadableResultError:
        stored = None
    if stored and (stored.get("status") in store.FINISHED
                   or since is not None and store.written_at(folder) >= since):
        return stored
    holder = live_holder(folder)
    return None if holder is None else {"claimed_by": holder.describe(), "run_key": plan.spec.run_key}


def still_ours(folder: Path) -> None:
    """Before a run writes into its folder (its adapter, its result): RunClaimedError if this process
    has lost its claim on the run meanwhile (claims.taken_from_us): the new owner's files stand, and
    a sweep's driver waits for its result, as for any run another process trains."""
    taken_by = taken_from_us(folder)
    if taken_by:
        say(f"{folder.name}: its claim was taken over by {taken_by} while this process stalled; "
            f"this process writes nothing more into it")
        raise RunClaimedError(folder, taken_by)


def _write_own(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    still_ours(folder)
    return store.write_result(folder, record)


@contextlib.contextmanager
def store_write(path: Path):
    """A write into the store, whose refusal (a full disk, a read-only store) is raised as the
    StoreError that names `path` and the cause; other failures pass unchanged."""
    try:
        yield
    except Exception as e:
        failure = store.storage_error(e, path)
        if failure is None or failure is e:
            raise
        raise failure from e


@contextlib.contextmanager
def saving_weights(target: Path, weights_file: str):
    """Saving a model or adapter into the folder `target`: store_write naming `weights_file` in it
    (safetensors says only "os error 28"); a refused save leaves no half-written `target`."""
    try:
        with store_write(target / weights_file):
            yield
    except StoreError:
        shutil.rmtree(target, ignore_errors=True)  # half an adapter is none, and its room may fit result.json
        raise
