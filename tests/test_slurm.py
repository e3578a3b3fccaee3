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

import pytest

from conftest import ROOT, TINY_TOPICS, launch

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


@pytest.fixture(scope="module")
def requeued(slurm_cluster, tmp_path_factory):
    """A run that outlasts its time limit, started in the background: it mostly sleeps (its steps are
    slowed), so it runs beside the design-card sweep instead of adding a minute to the tests."""
    # 120 steps of >= 0.5 s: over a minute of training against a 2-minute limit with USR2 60 s before
    # it. slurmctld looks at time limits every 30 s and signals when the warning time is less than one
    # such period away, so USR2 comes 30-60 s after the job starts (measured): mid-training, after
    # the first checkpoints even for a job slowed by the other tests; each requeued start gets as long.
    cwd = tmp_path_factory.mktemp("requeue")
    slow = TINY_TOPICS + ["train.max_steps=120", "train.eval_steps=10", "train.step_sleep_s=0.5"]
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", "lora.r=2", *slow, *SLURM,
           "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60", "hydra.launcher.max_num_timeout=10"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield {"cwd": cwd, "proc": proc}
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def design_card(requeued, tmp_path_factory):
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
    second, store = design_card["second"], design_card["cwd"] / "results"
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep: 9 runs: 9 already done; best: " in second.stderr
    assert "submitted" not in second.stderr


def test_a_killed_driver_started_again_reattaches_and_trains_nothing_twice(slurm_cluster, tmp_path):
    # four runs of a few seconds, two at a time: the driver is killed while they are queued or running
    grid = ["-m", "lora.r=2,4", "lora.proj=qk,v"]
    slow = TINY_TOPICS + ["train.max_steps=10", "train.step_sleep_s=0.3", "hydra.launcher.array_parallelism=2"]
    cmd = [sys.executable, str(ROOT / "launch.py"), *grid, *slow, *SLURM]
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    store = tmp_path / "results"
    deadline = time.time() + 300
    while len(job_records(store)) < 4 and time.time() < deadline:
        time.sleep(0.2)
    assert len(job_records(store)) == 4, "the driver did not submit the sweep"
    os.kill(driver.pid, signal.SIGKILL)  # no goodbye at all, like a lost login node
    driver.communicate(timeout=30)
    submitted = job_records(store)
    before = {name: r for name, r in results(store).items() if r["status"] == "done"}
    assert len(before) < 4, "every run finished before the driver was killed: nothing left to re-attach"
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


def test_a_failing_run_brings_its_traceback_to_the_driver(slurm_cluster, tmp_path):
    # qwen3-0.6b plans (its config ships) but its weights cannot be had offline: it fails in the job.
    # HF_HUB_OFFLINE (set by conftest, passed on to the job by sbatch) makes that immediate instead
    # of network retries.
    proc = launch(["-m", "model=qwen3-0.6b", "task=wordnet_mcq", "train.max_steps=2", "train.eval_steps=2",
                   "task.max_train=8", "task.max_eval=4", "task.max_test=4"] + SLURM, cwd=tmp_path)
    assert proc.returncode != 0
    assert re.search(r"run 1/1 model=qwen3-0.6b .*: FAILED after \d+s: SlurmRunError: job \d+ failed:", proc.stderr)
    assert "Traceback (most recent call last)" in proc.stderr and "ModelUnavailableError" in proc.stderr
    assert "sweep: 1 runs: 1 failed" in proc.stderr


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


def test_optuna_sweep_on_slurm_runs_its_trials_as_jobs(slurm_cluster, tmp_path):
    proc = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.sampler=grid", "lora.r=choice(2,4,8)", "hydra.sweeper.pruner=median"]
                  + TINY_TOPICS + SLURM, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "3/3 trials finished" in proc.stderr and "3 complete" in proc.stderr
    done = results(tmp_path / "results")
    assert len(done) == 3 and all(r["env"]["slurm_job_id"] for r in done.values())
    assert {r["env"]["slurm_job_id"] for r in done.values()} == \
        {rec["job_id"] for rec in job_records(tmp_path / "results").values()}


# last in the file: the run started with the first test and trained while the others ran
def test_a_run_past_its_time_limit_is_requeued_and_resumes_from_its_checkpoint(requeued):
    proc, tmp_path = requeued["proc"], requeued["cwd"]
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    (result,) = results(tmp_path / "results").values()
    (record,) = job_records(tmp_path / "results").values()
    assert result["status"] == "done" and result["timing"]["steps"] == 120
    step = result["resumed_from_step"]
    assert 0 < step < 120 and step % 10 == 0  # checkpoints every eval_steps inside a SLURM job
    states = [state for _, state in sacct_states(record["job_id"])]
    assert states[0] == "REQUEUED" and len(states) >= 2
    log = (tmp_path / "results" / ".submitit" / record["job_id"] / f"{record['job_id']}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log and f"resuming from step {step} " in log
    # the curve keeps the evaluations from before the requeue, each step once
    steps = [point["step"] for point in result["curve"]]
    assert steps[0] == 0 and steps == sorted(set(steps)) and step in steps and steps[-1] == 120
    assert not (tmp_path / "results" / next(iter(results(tmp_path / "results"))) / "trainer").exists()
