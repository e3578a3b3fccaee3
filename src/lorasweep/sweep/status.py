"""Where a run of a sweep stands, from its folder alone: the plan view's status column.

    done 0.623                      its result: done, with its objective's value
    diverged at step 3              its result: diverged (never trained again)
    running (pid 4242 on node3) step 120/500, ETA 3m20s
                                    a live claim (run/claims.py), and its progress.json (run/progress.py);
                                    its line under the table compares the rate with the prediction
    queued (SLURM job 812_3, pending)   submitted after its last result, and still in SLURM's queue
    submitted (SLURM job 812_3)     the same where the queue cannot be asked (no squeue here)
    failed: RuntimeError: ...       its result: failed, the reason shortened
    pruned                          its result: stopped by an Optuna sweep's pruner (a grid trains it again)
    interrupted at step 120/500     progress newer than its result and no live claim: whoever trained
                                    it stopped (Ctrl-C, a closed terminal, a killed job); it trains again
    over budget                     more trainable parameters than the budget: never trained
    result unreadable               its result.json cannot be read: it trains again
    not started                     nothing of it in the store
    error                           its config is invalid

Only a live claim says "running": a progress file is whoever trained it last, looking, and it stays
when the run ends (its result.json supersedes it) or stops without one. Which of the files came
last (the result, the progress, a dead claim, a SLURM submission) decides between failed,
interrupted and queued. Everything is looked at, nothing written: a few small reads per run, and
for SLURM runs one squeue call for the whole plan (settle).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from ..executors.slurm_jobs import JOB_FILE, queue_states, read_record
from ..console import duration
from ..run.claims import Holder, holder
from ..run.progress import Progress, read_progress, versus_prediction
from ..run.store import RESULT_FILE
from .triage import Triage

# in the order the plan's total line counts them
STATES = ("done", "diverged", "running", "queued", "submitted", "failed", "pruned", "interrupted",
          "over budget", "unreadable", "not started", "error")
TO_RUN = ("failed", "pruned", "interrupted", "unreadable", "not started")  # what a grid started now trains
PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD")
CELL_REASON = 40  # characters of a failure's reason in the table; its line under the table has more
LINE_REASON = 300


@dataclass(frozen=True)
class RunStatus:
    state: str                # one of STATES
    cell: str                 # the table's status column
    detail: str = ""          # more to say, in a line under the table ("" for nothing)
    job: str = ""             # submitted to SLURM since its last result: settle() asks the queue
    fallback: "RunStatus | None" = None  # what it is if that job has left the queue
    submitted_last: bool = False         # the submission is newer than its progress too


def run_status(decision: Triage, now: float | None = None) -> RunStatus:
    """The status of the run `decision` (triage(cfg, record=False)) is about; `job` still to settle."""
    now = time.time() if now is None else now
    stored = decision.stored or {}
    if decision.verdict == "invalid":
        return RunStatus("error", "error")
    if decision.verdict == "done":
        value = (stored.get("objective") or {}).get("value")
        return RunStatus("done", f"done {value:.3f}" if isinstance(value, (int, float)) else "done")
    if decision.verdict == "diverged":
        step = (stored.get("divergence") or {}).get("step")
        return RunStatus("diverged", f"diverged at step {step}" if step is not None else "diverged")
    if decision.verdict == "over_budget":
        return RunStatus("over budget", "over budget")
    assert decision.folder is not None
    progress = read_progress(decision.folder)
    if decision.verdict == "claimed" and decision.claim is not None:
        return _running(decision.claim, progress, now)
    return _not_running(decision, decision.folder, progress)


def settle(statuses: list[RunStatus]) -> list[RunStatus]:
    """The statuses with their SLURM jobs' queue states, asked once for all (executors/slurm_jobs)."""
    jobs = [s.job for s in statuses if s.job]
    if not jobs:
        return statuses
    states = queue_states(jobs)
    return [_settled(s, states) if s.job else s for s in statuses]


def _running(claim: Holder, progress: Progress | None, now: float) -> RunStatus:
    where = claim.where
    if progress is None or progress.modified < claim.owner.get("since", 0) - 1:  # none, or an earlier try's
        return RunStatus("running", f"running ({where}), starting",
                         f"being trained by {claim.describe()}: not training yet (loading, or evaluating before "
                         f"its first step)")
    eta = progress.eta_now(now)
    step = f"step {progress.step}/{progress.total_steps}"
    loss, last_eval = progress.data.get("train_loss"), progress.data.get("eval")
    said = [step]
    if isinstance(loss, dict) and isinstance(loss.get("value"), (int, float)):
        said.append(f"loss {loss['value']:.4g} (step {loss.get('step')})")
    if isinstance(last_eval, dict) and isinstance(last_eval.get("value"), (int, float)):
        said.append(f"eval {last_eval.get('metric')} {last_eval['value']:.4g} (step {last_eval.get('step')})")
    eta_text = f"ETA {duration(eta)}" if eta is not None else ""
    said += [eta_text] if eta_text else []
    versus = _versus(progress, eta, now)
    said += [versus] if versus else []
    said.append(f"updated {duration(max(0.0, now - progress.updated))} ago")
    return RunStatus("running", f"running ({where}) {step}" + (f", {eta_text}" if eta_text else ""),
                     f"being trained by {claim.describe()}: {', '.join(said)}")


def _versus(progress: Progress, eta: float | None, now: float) -> str:
    """Training's time at the rate measured so far against its prediction (progress.json's predicted_s)."""
    try:
        started = datetime.fromisoformat(progress.data["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return ""
    predicted = progress.data.get("predicted_s")
    return versus_prediction(now - started, eta, predicted if isinstance(predicted, (int, float)) else None)


def _not_running(decision: Triage, folder: Path, progress: Progress | None) -> RunStatus:
    """No live claim: its files say what became of it, the newest first."""
    stored = decision.stored or {}
    t_result = _mtime(folder / RESULT_FILE) if stored else -math.inf
    t_progress = progress.modified if progress is not None else -math.inf
    dead = holder(folder)  # a claim left by an owner that is gone (triage saw no live one)
    t_claim = _number(dead.owner.get("since")) if dead is not None else -math.inf
    found = _stopped(decision, progress, dead, t_result, t_progress, t_claim)
    job = read_record(folder)
    t_job = _mtime(folder / JOB_FILE) if job is not None else -math.inf
    if job is not None and t_job > t_result:
        job_id = str(job["job_id"])
        return RunStatus("submitted", f"submitted (SLURM job {job_id})", job=job_id, fallback=found,
                         submitted_last=t_job >= max(t_progress, t_claim))
    return found


def _stopped(decision: Triage, progress: Progress | None, dead: Holder | None,
             t_result: float, t_progress: float, t_claim: float) -> RunStatus:
    stored = decision.stored or {}
    if decision.unreadable:
        return RunStatus("unreadable", "result unreadable")  # its line is the plan's (PlanRow.unreadable)
    if progress is not None and t_progress > t_result:
        who = progress.data
        job = f"SLURM job {who['slurm_job']}, " if who.get("slurm_job") else ""
        at = f"step {progress.step}/{progress.total_steps}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(progress.updated))
        return RunStatus("interrupted", f"interrupted at {at}",
                         f"interrupted at {at}: {job}pid {who.get('pid')} on {who.get('host')} last wrote its "
                         f"progress at {when} and holds no claim now; it trains again")
    if dead is not None and t_claim > t_result:
        return RunStatus("interrupted", "interrupted before training",
                         f"interrupted before its first step: claimed by {dead.describe()}, which is gone; "
                         f"it trains again")
    if stored.get("status") == "failed":
        reason = str(stored.get("reason") or "no reason recorded").strip().splitlines()[0]
        return RunStatus("failed", f"failed: {_shorten(reason, CELL_REASON)}",
                         f"failed: {_shorten(reason, LINE_REASON)}; it trains again")
    if stored.get("status") == "pruned":
        return RunStatus("pruned", "pruned", f"{stored.get('reason') or 'pruned'}; a grid trains it again")
    return RunStatus("not started", "not started")


def _settled(status: RunStatus, states: dict[str, str] | None) -> RunStatus:
    job, fallback = status.job, status.fallback or RunStatus("not started", "not started")
    if states is None:  # the queue cannot be asked: the submission, unless the job has trained since
        return replace(status, job="", fallback=None) if status.submitted_last else fallback
    state = states.get(job)
    if state is None:  # it has left the queue, with no result and no live claim
        if fallback.state != "not started":
            return fallback
        return RunStatus("interrupted", f"interrupted: SLURM job {job} ended",
                         f"SLURM job {job} left the queue without a result (cancelled, or killed before it "
                         f"began); it trains again")
    word = state.split()[0].upper()
    if word in PENDING:
        return RunStatus("queued", f"queued (SLURM job {job}, {word.lower()})")
    return RunStatus("queued", f"starting (SLURM job {job}, {word.lower()})",
                     f"SLURM job {job} is {word.lower()} and has not claimed its run yet (loading its data)")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -math.inf


def _number(x) -> float:
    return float(x) if isinstance(x, (int, float)) else -math.inf
