"""One run trained data-parallel on a worker's N GPUs (hydra.launcher.gpus_per_run=N).

The worker (a local worker given a slot of N GPUs, or a SLURM job asking for N) claims the run as
for any run, then starts N rank processes (executors/rank.py) with the environment transformers'
Trainer reads (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): the Trainer, and trl's
SFTTrainer, then train through accelerate's DDP (NCCL on GPUs; gloo on a CPU, how the tests run it).

- train.batch_size stays the run's global batch: each rank takes batch_size / N of it (run/loop.py;
  a batch N does not divide is refused at planning, config/checks.check_data_parallel), so the run takes
  the optimizer steps it takes on one GPU.
- Rank 0 writes everything the run writes (progress, result, adapter, curve, tracking, its own
  failure); the other ranks run the same lifecycle into a scratch folder of the worker's, deleted
  afterwards, and read rank 0's checkpoints to resume. Every rank evaluates the whole evaluation
  set: the numbers of one process, with no collective for a rank to wait on.
- The claim is the worker's: it outlives the ranks, and its pid is the one the driver watches (a
  worker that dies leaves a dead claim, taken over as for any run). Ranks hold none.
- A rank that ends in failure ends the others at once (none waits on a dead peer's all-reduce); the
  run is recorded failed with the first rank's cause (rank 0's own record stands when it came
  first); a rank out of accelerator memory fails the run as one process out of memory does
  (AcceleratorMemoryError: one line, what to lower). SIGTERM to the worker (the sweep stopping:
  worker.Stopped) stops the ranks and records nothing, as for a run trained in the worker itself.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..console import say
from ..errors import AcceleratorMemoryError, UnreadableResultError
from ..run import store
from ..run.records import base_record, write_failure
from ..run.plan import Plan
from .deaths import death_reason

POLL_S = 0.2  # how soon a failed rank is noticed and its peers ended
GRACE_S = 10.0  # SIGTERM, then this long before SIGKILL: a rank blocked in a collective may not stop on SIGTERM
ERROR_FILE = "LORASWEEP_RANK_ERROR"  # where a rank writes why it failed (executors/rank.py)
CONFIG_FILE = "config.json"


class RankFailedError(RuntimeError):
    """A data-parallel rank failed: the run is recorded failed with this cause."""


def rank_trainer(cfg: Mapping[str, Any], ranks: int):
    """lifecycle.run_config's `trainer` for a run on `ranks` data-parallel ranks."""
    return lambda plan, folder: train_in_ranks(cfg, plan, folder, ranks)


def train_in_ranks(cfg: Mapping[str, Any], plan: Plan, folder: Path, ranks: int) -> dict:
    """Train the claimed run `plan` (its folder `folder`) with `ranks` rank processes; its result."""
    t_start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="lorasweep-ranks-"))
    try:
        (scratch / CONFIG_FILE).write_text(json.dumps(dict(cfg)))
        say(f"{plan.spec.slug}: training data-parallel on {ranks} ranks "
            f"(GPUs {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none: CPU'}), "
            f"{plan.spec.train.batch_size // ranks} of each batch of {plan.spec.train.batch_size} a rank")
        procs, relays = _start(scratch, ranks)
        try:
            failed = _watch(procs)
        finally:
            _end(procs)  # Stopped (SIGTERM) too: no rank trains on after its worker
            for relay in relays:  # rank 0's last lines, into this run's log before execute() closes it
                relay.join(timeout=GRACE_S)
        if failed is None:
            return store.read_result(folder)
        raise _rank_failure(plan, folder, scratch, procs, failed, t_start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _start(scratch: Path, ranks: int) -> tuple[list[subprocess.Popen], list[threading.Thread]]:
    threads = max(1, _threads() // ranks)  # the worker's share of the cores, split between its ranks
    env = {**os.environ, "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs, relays = [], []
    for rank in range(ranks):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                    ERROR_FILE: str(scratch / f"rank-{rank}.error.json")}
        # rank 0 speaks for the run, into the worker's log; the others' lines would repeat its own
        out = subprocess.PIPE if rank == 0 else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", "lorasweep.executors.rank", str(scratch / CONFIG_FILE)],
                                env=rank_env, stdout=out, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        if proc.stdout is not None:
            relays.append(threading.Thread(target=_relay, args=(proc.stdout,), daemon=True))
            relays[-1].start()
    return procs, relays


def _relay(pipe) -> None:
    """Rank 0's lines to this worker's stderr (its log file in a sweep)."""
    for line in pipe:
        sys.stderr.write(line)
        sys.stderr.flush()


def _watch(procs: list[subprocess.Popen]) -> int | None:
    """Wait for every rank; the first one to end in failure (its rank), or None when all succeeded."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(POLL_S)


def _end(procs: list[subprocess.Popen]) -> None:
    """Stop the ranks still running: SIGTERM, then SIGKILL after GRACE_S."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _rank_failure(plan: Plan, folder: Path, scratch: Path, procs: list[subprocess.Popen], first_seen: int,
                  t_start: float) -> RankFailedError | AcceleratorMemoryError:
    """The run's failure, to raise: an AcceleratorMemoryError when the first rank that failed ran out
    of accelerator memory (said in one line, as a run in one process), else a RankFailedError. The
    first rank that failed is the one whose error file is the oldest (a peer of a failed rank fails
    after it, on the broken connection); a rank killed without one (the OOM killer) is the first the
    worker saw end. Rank 0 records its own failure (its traceback.txt, the run's failed result); any
    other rank's is recorded here, in rank 0's place."""
    errors = []
    for rank in range(len(procs)):
        path = scratch / f"rank-{rank}.error.json"
        if path.exists():
            try:
                errors.append(json.loads(path.read_text()))
            except ValueError:  # killed while writing it
                pass
    if errors:
        first = min(errors, key=lambda e: e["time"])
        rank, reason, said, text = first["rank"], first["reason"], first["said"], first["traceback"]
        out_of_memory = first["out_of_memory"]
    else:
        rank, text, out_of_memory = first_seen, "", False
        reason = said = death_reason(procs[first_seen].returncode, None, who="process")
    where = f"data-parallel rank {rank} of {len(procs)}"
    try:
        stored = store.read_result(folder) if rank == 0 else None
    except UnreadableResultError:  # cut short by the kill: recorded again below
        stored = None
    if not (stored and stored.get("status") == "failed"):
        base = base_record(plan)
        base["env"]["data_parallel"] = len(procs)  # this worker's env, but the ranks' world size
        write_failure(folder, base, f"{where}: {reason}", f"{where}:\n{text}" if text else "", t_start)
    say(f"{plan.spec.slug}: {where} failed: {said}")
    return (AcceleratorMemoryError if out_of_memory else RankFailedError)(f"{where} failed: {said}")


def _free_port() -> int:
    """A free TCP port for the ranks' rendezvous (rank 0 listens on it). Another process could take it
    between here and rank 0's bind: then the ranks fail to start, and the run fails, saying so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _threads() -> int:
    import torch

    return torch.get_num_threads()
