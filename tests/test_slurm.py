"""Sweeps on a real SLURM (the session's test cluster, tests/slurm_cluster.py) through launch.py.

Each test runs `python launch.py -m ... hydra/launcher=slurm_local` as a user would and asserts on
result files, the job records and sacct: no mocked sbatch anywhere.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import ROOT, TINY_TOPICS, launch, wait_until
from lorasweep.run.study_storage import open_storage

SLURM = ["hydra/launcher=slurm_local"]
# tiny-qwen3 has the MLP projections (g, u, d) that the design card's qvkogdu needs; tiny-bert has no g
TINY_QWEN = ["model=tiny-qwen3" if o.startswith("model=") else o for o in TINY_TOPICS]
DESIGN_CARD = ["-m", "lora.r=4,8,16", "lora.proj=qk,qkvo,qvkogdu"]


def results(folder):
    """{run folder name: result.json} for every run with a result."""
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/result.json")}


def job_records(folder):
    """{run folder name: its slurm_job.json}: the job each run was submitted as."""
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/slurm_job.json")}


def sacct_states(job_id):
    """[(job id, state)] of every allocation sacct knows for this job or array, requeues included."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-o", "JobID,State", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "REQUEUED")


def ended_states(job_id, timeout=120):
    """sacct_states once every allocation has ended: accounting may lag a job's result file, which
    the driver returns on."""
    deadline = time.time() + timeout
    while True:
        states = sacct_states(job_id)
        if (states and all(state.split()[0] in ENDED for _, state in states)) or time.time() > deadline:
            return states
        time.sleep(0.5)


@pytest.fixture(scope="module")
def design_card(slurm_cluster, tmp_path_factory):
    """The design card's 9-run sweep on SLURM, then the same command again."""
    cwd = tmp_path_factory.mktemp("design_card")
    t0 = time.perf_counter()
    first = launch(DESIGN_CARD + TINY_QWEN + SLURM, cwd=cwd, timeout=600)
    first_s = time.perf_counter() - t0
    second = launch(DESIGN_CARD + TINY_QWEN + SLURM, cwd=cwd, timeout=600)
    return {"cwd": cwd, "first": first, "second": second, "first_s": first_s}


def test_design_card_sweep_runs_every_cell_as_slurm_array_jobs(design_card):
    first, store = design_card["first"], design_card["cwd"] / "results"
    assert first.returncode == 0, first.stderr[-4000:]
    assert "sweep: 9 runs: 9 done; best: " in first.stderr
    assert re.search(r"run 9/9 submitted: lora.r=16 lora.proj=qvkogdu \(submitted as job \d+_\d+", first.stderr)
    done = results(store)
    assert len(done) == 9 and {r["status"] for r in done.values()} == {"done"}
    assert {r["config"]["lora"]["proj"] for r in done.values()} == {"qk", "qkvo", "qkvogud"}
    records = job_records(store)
    # each result was computed in the job it was submitted as
    assert {name: r["env"]["slurm_job_id"] for name, r in done.items()} == \
        {name: rec["job_id"] for name, rec in records.items()}
    # MaxArraySize=5 on the test cluster: 9 runs go as two arrays, of 5 and 4 tasks
    arrays = sorted(sum(1 for rec in records.values() if rec["job_id"].startswith(a + "_"))
                    for a in {rec["job_id"].split("_")[0] for rec in records.values()})
    assert arrays == [4, 5]
    print(f"\n9-run design-card sweep on SLURM: {design_card['first_s']:.0f}s", file=sys.stderr)


def test_the_same_sweep_again_submits_nothing(design_card):
    second = design_card["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep: 9 runs: 9 already done; best: " in second.stderr
    assert "submitted" not in second.stderr


def _kill_the_driver_once_submitted(args: list[str], cwd, runs: int) -> dict:
    """Start `python launch.py ARGS`, SIGKILL the driver (no goodbye at all, like a lost login node)
    once each of its `runs` runs has a job record; returns the records."""
    driver = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while len(job_records(cwd / "results")) < runs and time.time() < deadline:
        time.sleep(0.2)
    assert len(job_records(cwd / "results")) == runs, "the driver did not submit the sweep"
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=30)
    return job_records(cwd / "results")


def test_a_killed_driver_started_again_reattaches_and_trains_nothing_twice(slurm_cluster, tmp_path, hold):
    # four runs, two at a time, each held at its 2nd step: the driver is killed while they are queued or running
    grid = ["-m", "lora.r=2,4", "lora.proj=qk,v"]
    slow = TINY_TOPICS + ["train.max_steps=10", "hydra.launcher.array_parallelism=2"]
    store = tmp_path / "results"
    held = hold(step=2)
    submitted = _kill_the_driver_once_submitted(grid + slow + SLURM, tmp_path, runs=4)
    before = {name: r for name, r in results(store).items() if r["status"] == "done"}
    assert before == {}, "a run finished before the driver was killed"
    held.release()
    proc = launch(grid + slow + SLURM, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert job_records(store) == submitted  # not one run submitted again
    after = results(store)
    assert len(after) == 4 and {r["status"] for r in after.values()} == {"done"}
    assert all(after[name] == r for name, r in before.items())  # finished runs untouched
    # every run not yet done when the new driver planned the sweep is collected from its old job
    already = int((re.search(r"(\d+) already done", proc.stderr) or [0, 0])[1])
    assert proc.stderr.count("re-attached to job") == 4 - already and "submitted as job" not in proc.stderr
    array = next(iter(submitted.values()))["job_id"].split("_")[0]
    tasks = [jid for jid, _ in sacct_states(array)]
    assert sorted(tasks) == sorted(rec["job_id"] for rec in submitted.values())  # four tasks ever ran


@pytest.fixture(scope="module")
def failing_sweep(slurm_cluster, tmp_path_factory):
    """Two runs that fail in their jobs, then the same command again.

    qwen3-0.6b plans (its config ships) but its weights cannot be had offline: it fails loading, with
    no result. tiny-qwen3 loads, but no MCQ example fits 8 tokens with its answer: it fails in
    training and records status failed. HF_HUB_OFFLINE (set by conftest, passed on to the jobs by
    sbatch) makes the first immediate instead of network retries."""
    cwd = tmp_path_factory.mktemp("failing")
    args = ["-m", "model=qwen3-0.6b,tiny-qwen3", "task=wordnet_mcq", "train.max_steps=2", "train.eval_steps=2",
            "task.max_train=8", "task.max_eval=4", "task.max_test=4", "train.max_length=8"] + SLURM
    first = launch(args, cwd=cwd)
    records = job_records(cwd / "results")
    second = launch(args, cwd=cwd)
    return {"store": cwd / "results", "first": first, "first_records": records, "second": second}


def test_a_failing_run_brings_its_traceback_to_the_driver(failing_sweep):
    proc = failing_sweep["first"]
    assert proc.returncode != 0
    assert re.search(r"run 1/2 model=qwen3-0.6b: FAILED after \d+s: SlurmRunError: job \d+_0 failed:", proc.stderr)
    assert "Traceback (most recent call last)" in proc.stderr and "ModelUnavailableError" in proc.stderr
    assert re.search(r"run 2/2 model=tiny-qwen3: FAILED after \d+s: SlurmRunError: job \d+_1 failed:", proc.stderr)
    assert "DataError: no training example fits train.max_length=8" in proc.stderr
    assert "sweep: 2 runs: 2 failed" in proc.stderr


def test_a_run_whose_job_failed_is_submitted_again(failing_sweep):
    """README: started again, the driver submits what is missing, "a run whose job failed is
    submitted again": as a new job, neither re-attached to the failed one nor skipped."""
    before, store, proc = failing_sweep["first_records"], failing_sweep["store"], failing_sweep["second"]
    assert len(before) == 2
    assert [state for _, state in ended_states(next(iter(before.values()))["job_id"])] == ["FAILED", "FAILED"]
    after = job_records(store)
    assert after.keys() == before.keys()
    same = [name for name in before if after[name]["job_id"] == before[name]["job_id"]]
    assert not same, f"not submitted again, still recorded as the failed job: {same}"
    assert "re-attached" not in proc.stderr and "already done" not in proc.stderr
    for name, record in after.items():
        model = "tiny-qwen3" if name.startswith("tiny-qwen3") else "qwen3-0.6b"
        assert re.search(rf"run \d/2 submitted: model={model} \(submitted as job {record['job_id']},", proc.stderr)
    assert "sweep: 2 runs: 2 failed" in proc.stderr and proc.returncode != 0
    # it ran again in its new job: the training failure's record is the second job's
    (failed,) = [r for r in results(store).values()]
    assert failed["status"] == "failed" and failed["config"]["model"]["name"] == "tiny-qwen3"
    assert failed["env"]["slurm_job_id"] == after[next(n for n in after if n.startswith("tiny-qwen3"))]["job_id"]
    new_array = next(iter(after.values()))["job_id"].split("_")[0]
    assert [state for _, state in ended_states(new_array)] == ["FAILED", "FAILED"]


@pytest.mark.parametrize("setting, message", [
    ("hydra.launcher.partition=nope", "Invalid partition name specified"),
    ("hydra.launcher.cpus_per_task=64", "More processors requested than permitted"),
    ("hydra.launcher.gres=gpu:1", "Invalid generic resource (gres) specification"),
])
def test_bad_cluster_settings_fail_at_once_with_sbatchs_error(slurm_cluster, tmp_path, setting, message):
    proc = launch(["-m", "lora.r=2,4"] + TINY_TOPICS + SLURM + [setting], cwd=tmp_path)
    assert proc.returncode == 2
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("sweep: the cluster refused the runs: "))
    assert message in line and "Traceback" not in proc.stderr
    assert not job_records(tmp_path / "results") and not results(tmp_path / "results")  # nothing submitted


def test_optuna_sweep_on_slurm_keeps_its_study_in_a_journal_and_continues_it(slurm_cluster, tmp_path):
    """Under hydra/launcher=slurm the study is a journal file in the results store (not sqlite, which
    Optuna's FAQ warns against on a network filesystem); the jobs report to it for pruning, and the
    same command with a larger n_trials continues it."""
    store = tmp_path / "results"
    journal = f"journal://{store.resolve()}/optuna.journal"

    def sweep(n_trials):
        proc = launch(["-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=2",
                       "hydra.sweeper.sampler=grid", "lora.r=choice(2,4,8)", "hydra.sweeper.pruner=median"]
                      + TINY_TOPICS + SLURM, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert re.search(rf"^optuna study '[^']+' in {re.escape(journal)}: {n_trials} trials", proc.stderr, re.M)
        return proc

    first = sweep(2)
    assert "2/2 trials finished" in first.stderr and "2 complete" in first.stderr
    assert (store / "optuna.journal").is_file() and not (store / "optuna.db").exists()
    second = sweep(3)  # the same command, one more trial: the study goes on from 2
    assert "3/3 trials finished" in second.stderr and "this time 1 trained, 0 reused" in second.stderr
    assert not (store / "optuna.db").exists()
    (name,) = optuna.get_all_study_names(storage=open_storage(journal))
    trials = optuna.load_study(study_name=name, storage=open_storage(journal)).trials
    assert [(t.state, t.params["lora.r"]) for t in trials] == [(optuna.trial.TrialState.COMPLETE, r) for r in (2, 4, 8)]
    done = results(store)
    by_key = {r["run_key"]: r for r in done.values()}
    for t in trials:
        run = by_key[t.user_attrs["run_key"]]
        assert t.value == run["objective"]["value"]
        # each job opened the journal and reported its evaluations to its trial
        assert t.intermediate_values == {p["step"]: p["accuracy"] for p in run["curve"] if p["step"] > 0} != {}
    assert len(done) == 3 and all(r["env"]["slurm_job_id"] for r in done.values())
    assert {r["env"]["slurm_job_id"] for r in done.values()} == \
        {rec["job_id"] for rec in job_records(store).values()}


def test_a_signalled_run_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path, hold):
    """README: at a time limit or a preemption SLURM sends USR2 (`signal_delay_s` before the limit);
    submitit requeues the job and the run resumes from its last checkpoint, not from step 0. Here
    the USR2 is sent by hand once a complete checkpoint exists, as slurmctld would send it."""
    # checkpoints every eval_steps inside a SLURM job; the run is held at step 11 (checkpoints 5 and 10
    # saved) until the job has caught the signal
    slow = TINY_TOPICS + ["train.max_steps=30", "train.eval_steps=5"]
    held = hold(step=11)
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", "lora.r=2", *slow, *SLURM]
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "results"
    try:
        wait_until(lambda: held.runs() or driver.poll() is not None, "the run to reach step 11")
        assert held.runs(), "the run was not held: " + driver.communicate()[1][-3000:]
        saved = list(store.glob("*/trainer/checkpoint-*/trainer_state.json"))
        assert saved, "no checkpoint was saved"
        seen = max(int(p.parent.name.split("-")[-1]) for p in saved)
        (record,) = job_records(store).values()
        subprocess.run(["scancel", "--signal=USR2", record["job_id"]], check=True, timeout=60)
        err = store / ".submitit" / record["job_id"] / f"{record['job_id']}_0_log.err"
        wait_until(lambda: err.exists() and "Caught signal SIGUSR2" in err.read_text(), "the job to catch USR2")
        held.release()
        _, stderr = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr[-4000:]
    (result,) = results(store).values()
    assert result["status"] == "done" and result["timing"]["steps"] == 30
    step = result["resumed_from_step"]
    assert seen <= step < 30 and step % 5 == 0
    assert result["env"]["slurm_job_id"] == record["job_id"] and result["env"]["slurm_restarts"] >= 1
    assert [state for _, state in ended_states(record["job_id"])] == ["REQUEUED", "COMPLETED"]
    log = (store / ".submitit" / record["job_id"] / f"{record['job_id']}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log and f"resuming from step {step} " in log
    # the curve keeps the evaluations from before the requeue, each step once
    steps = [point["step"] for point in result["curve"]]
    assert steps == list(range(0, 31, 5))
    assert not (store / next(iter(results(store))) / "trainer").exists()


def test_a_pack_trains_in_one_slurm_job_and_a_restarted_driver_collects_it(slurm_cluster, tmp_path, hold):
    """pack=true: the grid's four runs go as one job; each run's folder names that job. The driver is
    killed while the pack trains (held at its 2nd step); started again, it re-attaches to the job and
    submits nothing."""
    grid = ["-m", "lora.r=2,4", "lora.proj=qk,v", "hydra.launcher.pack=true"]
    slow = [o for o in TINY_TOPICS if not o.startswith("train.max_steps=")] + ["train.max_steps=20"]
    store = tmp_path / "results"
    held = hold(step=2)
    submitted = _kill_the_driver_once_submitted(grid + slow + SLURM, tmp_path, runs=4)
    assert len({rec["job_id"] for rec in submitted.values()}) == 1  # one job for the 4 runs
    assert [r for r in results(store).values() if r["status"] == "done"] == [], "the pack ended too soon"
    held.release()

    proc = launch(grid + slow + SLURM, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "submitted as job" not in proc.stderr and job_records(store) == submitted  # nothing submitted again
    after = results(store)
    assert len(after) == 4 and {r["status"] for r in after.values()} == {"done"}
    job = next(iter(submitted.values()))["job_id"]
    assert {r["env"]["slurm_job_id"] for r in after.values()} == {job}  # all trained in that one job
    assert {r["pack"]["size"] for r in after.values()} == {4} and len({r["pack"]["id"] for r in after.values()}) == 1
    assert "sweep: 4 runs: " in proc.stderr and "failed" not in proc.stderr.split("sweep: 4 runs: ")[-1]
