"""What a SLURM driver records in a run's folder, and what SLURM says of its job; no submitit here,
so that a look at a sweep (the plan view) pays for neither submitit nor a slow sacct.

    slurm_job.json       {job_id, submitit_folder, submitted_at}: written when the run is submitted
    job_state(id)        one job's state, sacct then squeue (the driver: never submit a queued run twice)
    queue_states(ids)    the states of many jobs still in the queue, in one guarded squeue call
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable

from ..run.store import write_json_atomically

JOB_FILE = "slurm_job.json"
QUEUE_TIMEOUT_S = 5.0  # one squeue for a whole plan; a controller that does not answer in this is not waited for


def record(folder: Path, job_id: str, submitit_folder: Path) -> None:
    write_json_atomically(folder / JOB_FILE, {"job_id": job_id, "submitit_folder": str(submitit_folder),
                                              "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_record(folder: Path) -> dict | None:
    """The run's slurm_job.json, or None (none, or not readable)."""
    try:
        found = json.loads((Path(folder) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("job_id") else None


def job_state(job_id: str) -> str | None:
    """The job's state (e.g. RUNNING, PENDING, COMPLETED, "CANCELLED by 0"); None if SLURM knows it not.

    sacct first (it knows finished jobs); squeue when sacct has nothing (accounting lagging or down):
    a job that is still queued must never be taken for a lost one and submitted twice."""
    array, _, index = job_id.partition("_")
    for command in (["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array],
                    ["squeue", "-h", "-r", "-o", "%i|%T", "-j", array]):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid == job_id or (index and _in_pending_range(jid, array, int(index))):
                return state
    return None


def queue_states(job_ids: Iterable[str], timeout_s: float = QUEUE_TIMEOUT_S) -> dict[str, str] | None:
    """{job id: state} of those of `job_ids` still in SLURM's queue (PENDING, RUNNING, ...), asked in
    one squeue call; a job not in it has left the queue. None when the queue cannot be asked: no
    squeue here, or it failed or did not answer within `timeout_s`."""
    ids = sorted(set(job_ids))
    if not ids or shutil.which("squeue") is None:
        return None if ids else {}
    arrays = sorted({i.partition("_")[0] for i in ids})
    try:
        # -r: one line per array task, pending ones too; by array id, since a finished task's own id
        # makes squeue fail the whole call ("Invalid job id specified")
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # every job of the list gone from the queue: squeue says "Invalid job id specified"
        return {} if "invalid job id" in done.stderr.lower() else None
    found = dict(line.strip().partition("|")[::2] for line in done.stdout.splitlines() if "|" in line)
    return {i: found[i] for i in ids if i in found}


def _in_pending_range(jid: str, array: str, index: int) -> bool:
    """sacct prints an array's pending tasks as one line, e.g. 123_[2-4%8] or 123_[5,7]."""
    match = re.fullmatch(rf"{array}_\[([\d,\-]+)(%\d+)?\]", jid)
    if not match:
        return False
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        if int(low) <= index <= int(high or low):
            return True
    return False
