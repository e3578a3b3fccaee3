"""Claims on the results store: each run is trained by one process at a time, whoever started it.

Two drivers on one store (two terminals, a grid beside an Optuna study, SLURM jobs of two sweeps)
would otherwise train the same run twice, both writing into its folder. So the process that trains
a run first claims it: it writes `claim.json` into the run's folder with a hard link from a complete
temp file, which fails if the claim is there. A link is atomic on a local disk and on NFS alike,
where flock is not to be trusted, and nobody ever sees half a claim. The claim holds who owns it:
host, pid, the pid's start time, the SLURM job if any, and since when. While the run trains, a
thread touches the file every HEARTBEAT_S: its mtime is the heartbeat. The claim is deleted when
the run ends, however it ends, unless the process is killed outright.

A claim whose owner is dead is taken over, and that is said:
  - on this host: its pid is gone, or belongs to a later process (another start time), whatever
    its SLURM job: every process of one allocation shares the job id (two sweeps in one salloc
    shell), so a live pid is alive even in our own job;
  - elsewhere: its heartbeat is older than STALE_AFTER_S;
  - our own SLURM job, requeued after a preemption (SLURM_RESTART_COUNT above the claim's), on
    another node: it takes its own claim back at once (the earlier incarnation's processes are gone).
The start time is the kernel's (boot id and clock ticks since boot), which a step of the wall clock
does not move; claims written without it are compared by psutil's create_time, as before.
Taking over goes through a second exclusive file (claim.takeover), so that two processes finding
the same dead claim do not both take it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..console import say
from ..errors import RunClaimedError
from . import store

CLAIM_FILE = "claim.json"
TAKEOVER_FILE = "claim.takeover"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # a claim from another host untouched this long: its owner is gone
WAIT_POLL_S = 2.0  # how often a driver waiting for a run trained elsewhere looks at it: two small reads
RELEASE_RETRY_S = 0.25  # a store refusing a claim's deletion, tried again this often (Claim.release_wait_s)
TAKEOVER_STALE_S = 60.0  # a takeover takes milliseconds; one this old was left by a process that died in it


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, as its file says, and how fresh its heartbeat is."""

    owner: dict[str, Any]
    heartbeat_age_s: float

    @property
    def where(self) -> str:
        o = self.owner
        job = f"SLURM job {o['slurm_job']}, " if o.get("slurm_job") else ""
        return f"{job}pid {o.get('pid')} on {o.get('host')}"

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.owner.get("since", 0)))
        return f"{self.where}, since {since}"

    @property
    def alive(self) -> bool:
        o = self.owner
        if o.get("host") == socket.gethostname():
            # the process itself answers, whatever its SLURM job: processes of one allocation share the
            # job id, and a requeued job's earlier processes on this node are gone (their pids too)
            return _running(o)
        if o.get("slurm_job") and o["slurm_job"] == store.slurm_job_id() \
                and store.slurm_restarts() > int(o.get("slurm_restarts") or 0):
            return False  # our own job, requeued since the claim (SLURM counts restarts): its earlier run's
        return self.heartbeat_age_s < STALE_AFTER_S


def holder(folder: Path) -> Holder | None:
    """The claim on the run in `folder`, if there is one (alive or not), else None."""
    path = Path(folder) / CLAIM_FILE
    try:
        age = time.time() - path.stat().st_mtime
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # not ours to read, or not a claim: nobody we could wait for
        return Holder({"token": None, "host": "?", "pid": "?"}, float("inf"))
    return Holder(owner if isinstance(owner, dict) else {}, max(0.0, age))


def live_holder(folder: Path) -> Holder | None:
    """The claim on the run in `folder` if its owner is alive (training it now), else None."""
    found = holder(folder)
    return found if found is not None and found.alive else None


class Claim:
    """`with Claim(folder):` trains the run as its only trainer, or raises RunClaimedError (a live
    owner has it). The heartbeat runs while the block runs; the claim goes when it ends."""

    def __init__(self, folder: Path, release_wait_s: float = 0.0):
        self.folder = Path(folder)
        self.release_wait_s = release_wait_s  # how long a store that refuses the claim's deletion is tried again
        self.path = self.folder / CLAIM_FILE
        self.owner = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                      "pid_started": psutil.Process().create_time(), "pid_start": process_start(os.getpid()),
                      "slurm_job": store.slurm_job_id(), "slurm_restarts": store.slurm_restarts(),
                      "since": time.time(), "heartbeat_every_s": HEARTBEAT_S}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._created: list[Path] = []

    def __enter__(self) -> "Claim":
        self.acquire()
        _HELD[self.folder.resolve()] = self
        self._beat = threading.Thread(target=self._heartbeat, name="claim-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if _HELD.get(self.folder.resolve()) is self:
            del _HELD[self.folder.resolve()]
        self.release()

    def acquire(self) -> None:
        self._created = store.missing_folders(self.folder)  # ours to remove again if the run writes nothing
        while not self._link():
            found = holder(self.folder)
            if found is None:  # released between our link and our look: try again
                continue
            if found.alive:
                raise RunClaimedError(self.folder, found.describe())
            if self._take_over(found):
                say(f"{self.folder.name}: took over the claim of {found.where}, which is gone")
                return

    def release(self) -> None:
        """Delete the claim if it is still ours (a claim taken over from us is not ours to delete). A store
        that refuses (read-only) is tried again every RELEASE_RETRY_S for release_wait_s."""
        give_up_at = time.monotonic() + self.release_wait_s
        while True:
            try:
                if self.held:
                    self.path.unlink(missing_ok=True)
                break
            except OSError as e:  # a read-only store: the run's outcome stands; a claim whose owner is gone is taken over
                failure = store.storage_error(e, self.path)
                if failure is None:
                    raise
                if time.monotonic() < give_up_at:
                    time.sleep(RELEASE_RETRY_S)
                    continue
                say(f"{self.folder.name}: its claim could not be deleted ({failure}); it is taken over once this "
                    "process has ended")
                break
        for folder in self._created:  # a run that left nothing (its model could not be had) leaves no empty folders
            try:
                folder.rmdir()
            except OSError:  # not empty: the run, or another, wrote into it
                break

    @property
    def held(self) -> bool:
        found = holder(self.folder)
        return found is not None and found.owner.get("token") == self.owner["token"]

    def _link(self) -> bool:
        """Publish our claim if there is none: a complete temp file, hard-linked to claim.json."""
        try:  # a claim released just now may remove its run's empty folder as we make it: made again
            fd, tmp = store.new_temp_file(self.folder, ".claim-")
        except OSError as e:
            raise store.storage_error(e, self.path) or e
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f, indent=2)
            os.chmod(tmp, 0o644)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:  # a full disk, a read-only store: said as the store's fault, with the path
            raise store.storage_error(e, self.path) or e
        finally:
            os.unlink(tmp)

    def _take_over(self, dead: Holder) -> bool:
        """Replace `dead`'s claim by ours, as the only process doing so; False: look again."""
        if not _delete_dead(self.folder, dead):
            time.sleep(0.1)  # another process takes it over now, or did: look again after it
            return False
        return self._link()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self.held:
                    os.utime(self.path)
            except OSError:  # a store hiccup: the next beat tries again; a claim goes stale only after minutes
                pass


_HELD: dict[Path, Claim] = {}  # the claims this process holds now, by run folder (taken_from_us)


def taken_from_us(folder: Path) -> str | None:
    """Who has the run in `folder` if this process claimed it and has lost the claim since: it stalled
    past STALE_AFTER_S (a suspended job, a lost mount) and another process took the run over (and
    may have finished it). Its words for the user; None: the claim is still ours, or was never ours."""
    claim = _HELD.get(Path(folder).resolve())
    if claim is None or claim.held:
        return None
    found = holder(claim.folder)
    return found.describe() if found is not None else "another process, which took its claim over and finished"


def drop_dead_claim(folder: Path) -> None:
    """Delete the claim on the run in `folder` if its owner is dead (a worker killed under its run,
    whose driver records the run failed): the next trainer need not take it over."""
    found = holder(folder)
    if found is not None and not found.alive:
        _delete_dead(Path(folder), found)


def _delete_dead(folder: Path, dead: Holder) -> bool:
    """Delete `dead`'s claim as the only process doing so (the takeover file), so that a process that
    took it over meanwhile keeps its new claim; False: another process takes it over now, or it
    changed since `dead` was read (released, or taken)."""
    lock = folder / TAKEOVER_FILE
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > TAKEOVER_STALE_S:
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        now = holder(folder)
        if now is None or now.owner.get("token") != dead.owner.get("token"):
            return False
        (folder / CLAIM_FILE).unlink(missing_ok=True)
        return True
    finally:
        lock.unlink(missing_ok=True)


def drop_job_claim(folder: Path, job_id: str) -> None:
    """Delete the claim SLURM job `job_id` left on the run in `folder`: a job killed outright (out of
    memory, time limit, scancel) cannot release it, and its driver, seeing the job end without a
    result, spares everyone else the STALE_AFTER_S wait."""
    found = holder(folder)
    if found is not None and found.owner.get("slurm_job") == str(job_id):
        (Path(folder) / CLAIM_FILE).unlink(missing_ok=True)


def process_start(pid: int) -> str | None:
    """When process `pid` started, as the kernel counts it: "<boot id>:<clock ticks since boot>"
    (/proc/<pid>/stat, field 22). psutil's create_time() adds a boot time it derives from the wall
    clock now, in whole seconds: a clock step (NTP, a resumed VM) moves it and made a live owner look
    like a later process. None: no such process, or no /proc (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # after the command name, which may hold spaces


def _running(owner: dict[str, Any]) -> bool:
    """Whether the claim's process, on this host, runs still: its pid, started when the claim says."""
    try:
        pid = int(owner["pid"])
        if owner.get("pid_start"):
            return process_start(pid) == owner["pid_start"]
        # a claim from before pid_start, or from a host without /proc: the wall-clock start time
        return abs(psutil.Process(pid).create_time() - owner.get("pid_started", 0)) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
