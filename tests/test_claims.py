"""Claims on the results store (lorasweep.run.claims), on real files and real processes: one owner at
a time, a dead owner's claim taken over by exactly one process, nothing left behind."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lorasweep.errors import RunClaimedError, StoreError
from lorasweep.run import claims
from lorasweep.run.claims import CLAIM_FILE, Claim, holder, live_holder


def write_claim(folder: Path, age_s: float = 0.0, **owner) -> None:
    """A claim as another process would have left it, its heartbeat `age_s` old."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    path.write_text(json.dumps({"token": "theirs", "since": time.time() - age_s, **owner}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_holds_its_owner_and_goes_when_the_run_ends(tmp_path):
    folder = tmp_path / "results" / "run"
    with Claim(folder) as claim:
        owner = json.loads((folder / CLAIM_FILE).read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
        assert owner["token"] == claim.owner["token"]
        assert live_holder(folder) is not None
        with pytest.raises(RunClaimedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            Claim(folder).acquire()  # a second claim, even from the same process, is refused
    assert holder(folder) is None
    assert not (tmp_path / "results").exists()  # nothing was written under the claim: no empty folders left


def test_a_claim_is_released_when_the_run_raises(tmp_path):
    folder = tmp_path / "run"
    (folder / "result.json").parent.mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    with pytest.raises(ZeroDivisionError):
        with Claim(folder):
            1 / 0
    assert holder(folder) is None
    assert (folder / "result.json").exists()  # what the run wrote stays


def test_the_heartbeat_refreshes_the_claim_while_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    folder = tmp_path / "run"
    with Claim(folder):
        path = folder / CLAIM_FILE
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.monotonic() + 120  # a heartbeat thread on a loaded machine may wait for a core
        while holder(folder).heartbeat_age_s > 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holder(folder).heartbeat_age_s < 5


def test_a_claim_whose_pid_is_gone_is_taken_over_and_said(tmp_path, capsys):
    folder = tmp_path / "run"
    pid = dead_pid()
    write_claim(folder, host=socket.gethostname(), pid=pid, pid_started=time.time() - 5)
    assert holder(folder) is not None and live_holder(folder) is None
    with Claim(folder) as claim:
        assert holder(folder).owner["token"] == claim.owner["token"]
    assert f"took over the claim of pid {pid} on {socket.gethostname()}, which is gone" in capsys.readouterr().err


def test_a_claim_whose_pid_is_a_later_process_is_taken_over(tmp_path):
    """pid reuse: this process's pid, with another start time, is not the owner that claimed it."""
    folder = tmp_path / "run"
    write_claim(folder, host=socket.gethostname(), pid=os.getpid(), pid_started=1.0)
    assert live_holder(folder) is None


def test_a_claim_from_another_host_lives_while_its_heartbeat_is_fresh(tmp_path):
    folder = tmp_path / "run"
    write_claim(folder, age_s=claims.STALE_AFTER_S - 60, host="node-elsewhere", pid=1, slurm_job="777_3")
    found = live_holder(folder)
    assert found is not None and found.where == "SLURM job 777_3, pid 1 on node-elsewhere"
    with pytest.raises(RunClaimedError, match="SLURM job 777_3, pid 1 on node-elsewhere"):
        Claim(folder).acquire()
    write_claim(folder, age_s=claims.STALE_AFTER_S + 60, host="node-elsewhere", pid=1)
    assert live_holder(folder) is None
    with Claim(folder):
        assert holder(folder).owner["host"] == socket.gethostname()


def test_a_requeued_slurm_job_takes_its_own_claim_back(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_claim(folder, host="node-before-preemption", pid=1, slurm_job="812", slurm_restarts=0)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "813")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert live_holder(folder) is not None  # another job's
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    assert live_holder(folder) is None  # ours, from before the requeue (SLURM counted one restart since)
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert live_holder(folder) is not None  # ours, not requeued: another node of this allocation holds it


def test_a_live_process_of_our_own_slurm_job_keeps_its_claim(tmp_path, monkeypatch):
    """Every process of one allocation (two sweeps in one salloc shell) has the same SLURM_JOB_ID:
    a live one's claim is not a requeued job's, and is never taken over; a dead one's is."""
    folder = tmp_path / "run"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with Claim(folder) as claim:
        assert claim.owner["slurm_job"] == "4242" and claim.owner["slurm_restarts"] == 0
        assert live_holder(folder) is not None
        with pytest.raises(RunClaimedError, match="SLURM job 4242, pid"):
            Claim(folder).acquire()
    write_claim(folder, host=socket.gethostname(), pid=dead_pid(), pid_started=time.time(), slurm_job="4242")
    assert live_holder(folder) is None


def test_a_live_claim_stays_alive_when_the_wall_clock_steps(tmp_path, monkeypatch):
    """psutil's create_time() moves with the wall clock (its boot time is derived from it): a step
    of the clock must not make a live owner look like a later process that took its pid."""
    folder = tmp_path / "run"
    with Claim(folder):
        stepped = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: stepped(self) + 1.5)
        assert live_holder(folder) is not None
        with pytest.raises(RunClaimedError):
            Claim(folder).acquire()
    # our pid, started at another time by the kernel's count: a later process, not the owner
    write_claim(folder, host=socket.gethostname(), pid=os.getpid(), pid_start=f"{claims.process_start(os.getpid())}0")
    assert live_holder(folder) is None


def test_a_driver_drops_the_claim_of_its_killed_slurm_job_only(tmp_path):
    folder = tmp_path / "run"
    write_claim(folder, host="node1", pid=1, slurm_job="900_1")
    claims.drop_job_claim(folder, "900_2")
    assert holder(folder) is not None
    claims.drop_job_claim(folder, "900_1")
    assert holder(folder) is None


def test_a_dead_owners_claim_is_dropped_a_live_ones_kept(tmp_path):
    folder = tmp_path / "run"
    write_claim(folder, host=socket.gethostname(), pid=os.getpid(), pid_started=psutil.Process().create_time())
    claims.drop_dead_claim(folder)
    assert live_holder(folder) is not None  # alive: kept
    write_claim(folder, host=socket.gethostname(), pid=dead_pid(), pid_started=time.time())
    claims.drop_dead_claim(folder)
    assert holder(folder) is None


def test_a_claim_that_is_not_json_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / CLAIM_FILE).write_text("{half")
    with Claim(folder):
        assert holder(folder).owner["pid"] == os.getpid()


def _contend(folder: str, start, results, release) -> None:
    start.wait(timeout=120)  # a barrier: all of them imported and waiting, then released together
    try:
        with Claim(Path(folder)):
            results.put("won")
            release.wait(timeout=120)  # held until every one has tried
    except RunClaimedError:
        results.put("refused")


@pytest.mark.parametrize("dead_claim", [False, True], ids=["free", "dead owner's claim"])
def test_of_processes_claiming_one_run_at_once_exactly_one_wins(tmp_path, dead_claim):
    folder = tmp_path / "run"
    if dead_claim:  # all of them find the same dead claim: one takes it over, the rest are refused
        write_claim(folder, host=socket.gethostname(), pid=dead_pid(), pid_started=time.time())
    ctx = multiprocessing.get_context("spawn")
    procs_n = 6
    start, results, release = ctx.Barrier(procs_n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_contend, args=(str(folder), start, results, release)) for _ in range(procs_n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)  # a winner says so while it holds the claim
    release.set()
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert holder(folder) is None
    assert not (folder / claims.TAKEOVER_FILE).exists()


def test_a_claim_on_a_full_disk_is_a_store_error_naming_the_file(tmp_path):
    from test_faults import fill, tmpfs

    with tmpfs(tmp_path / "full") as store:
        (store / "run").mkdir()
        fill(store, leave=0)
        with pytest.raises(StoreError, match=r"No space left on device writing .*/run/claim\.json"):
            Claim(store / "run").acquire()
        assert sorted(p.name for p in (store / "run").iterdir()) == []  # no temp file left behind


def test_a_claim_the_read_only_store_keeps_at_the_runs_end_is_said_and_the_run_ends_as_it_did(tmp_path, capsys):
    """The store turns read-only while the run trains (a remount, a failing disk): the claim cannot be
    deleted at the end. That is said in one line and raises nothing, so the run's outcome (here: it
    ended well) stands; once this process has ended, the claim is a dead one, which is taken over."""
    from test_faults import read_only, tmpfs

    with tmpfs(tmp_path / "store", size="1m") as store:
        folder = store / "run"
        with Claim(folder):
            read_only(store)
        assert f"run: its claim could not be deleted (Read-only file system writing {folder / CLAIM_FILE}); it is " \
            "taken over once this process has ended" in capsys.readouterr().err
        assert holder(folder).owner["pid"] == os.getpid() and live_holder(folder) is not None


def test_a_run_whose_claim_was_taken_over_while_it_stalled_writes_nothing_over_the_new_owner(tmp_path, monkeypatch):
    """A process stalled past STALE_AFTER_S (a suspended job, a lost mount) on another host has lost its
    claim to a process that trains the run now: when it wakes, it neither saves its adapter nor writes
    its result over the new owner's; it says so, and the run is the new owner's (RunClaimedError, which
    a sweep's driver waits on)."""
    from conftest import TINY_TOPICS, compose_config

    from lorasweep.run import lifecycle
    from lorasweep.run.lifecycle import run_config

    cfg = compose_config([*TINY_TOPICS, f"results_dir={tmp_path}"])
    evaluate = lifecycle.tasks.evaluator

    def stall_then_evaluate(task, tokenizer, rows, train, head):  # the test evaluation comes after training
        run = evaluate(task, tokenizer, rows, train, head)

        def after_a_stall(model):
            if rows is task.test:  # meanwhile, another host took the claim over and trains the run
                [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
                write_claim(folder, host="node-elsewhere", pid=1)
            return run(model)
        return after_a_stall

    monkeypatch.setattr(lifecycle.tasks, "evaluator", stall_then_evaluate)
    with pytest.raises(RunClaimedError, match="pid 1 on node-elsewhere"):
        run_config(cfg)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (folder / "result.json").exists() and not (folder / "adapter").exists()
    assert holder(folder).owner["host"] == "node-elsewhere"  # the new owner's claim is left as it is


def test_a_dead_trainers_claim_beside_its_finished_result_goes_at_the_next_sweep(tmp_path):
    """A trainer killed after it wrote its result and before it released its claim (bench/chaos.py's
    200-fault soak of 2026-12-06 left one so): the next sweep's triage deletes the dead claim; the plan
    view, which writes nothing, leaves it; a live owner's claim stays."""
    from conftest import TINY_TOPICS, compose_config
    from lorasweep.run.plan import plan_run
    from lorasweep.run.store import write_result
    from lorasweep.sweep.triage import triage

    cfg = compose_config(TINY_TOPICS + [f"results_dir={tmp_path / 'results'}"])
    plan = plan_run(cfg)
    folder = plan.folder(tmp_path / "results")
    write_result(folder, {"run_key": plan.spec.run_key, "slug": plan.spec.slug, "status": "done",
                          "config": plan.spec.defining()})
    write_claim(folder, host=socket.gethostname(), pid=dead_pid(), pid_started=time.time() - 5)
    assert triage(cfg, record=False).verdict == "done" and (folder / CLAIM_FILE).exists()
    assert triage(cfg).verdict == "done" and not (folder / CLAIM_FILE).exists()
    write_claim(folder, host=socket.gethostname(), pid=os.getpid(), pid_started=psutil.Process().create_time())
    assert triage(cfg).verdict == "done" and live_holder(folder) is not None
