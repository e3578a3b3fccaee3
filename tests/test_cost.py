"""A run's predicted cost (run/cost.py, run/predict.py, run/calibration.py): the memory it predicts
orders runs as their settings do, a finished run on this machine calibrates the next prediction,
and the plan view shows it."""
import re
import subprocess
from datetime import datetime, timedelta

import pytest

from lorasweep.run.calibration import machine_fingerprint
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.run.claims import Claim
from lorasweep.run.predict import Target, predict, work
from lorasweep.run.progress import versus_prediction

from conftest import TINY_MCQ, compose_config, launch

# tiny-qwen3 on WordNet MCQ: its weights are small, so a step's activations and state drive its memory
BASE = ["model=tiny-qwen3", "task=wordnet_mcq", "task.max_train=64", "task.max_eval=8", "task.max_test=8",
        "train.batch_size=8", "train.max_length=128", "lora.r=8", "lora.proj=qkvo"]


def peak(overrides, device="cpu"):
    return work(plan_run(compose_config(BASE + overrides)), device).model_mb()


@pytest.mark.parametrize("smaller, larger", [
    (["lora.r=4"], ["lora.r=32"]),
    (["lora.proj=qk"], ["lora.proj=qkvogud"]),
    (["train.batch_size=4"], ["train.batch_size=16"]),
    (["train.max_length=32"], ["train.max_length=128"]),
    (["method=lora"], ["method=dora"]),
    (["method=dora"], ["method=full"]),
])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_predicted_memory_orders_runs_as_their_settings_do(smaller, larger, device):
    assert peak(smaller, device) < peak(larger, device)


def test_predicted_time_grows_with_the_work():
    at = lambda o: work(plan_run(compose_config(BASE + o)), "cpu").train_flops  # noqa: E731
    assert at(["lora.r=4"]) < at(["lora.r=32"]) < at(["method=full"])
    assert at(["train.max_steps=20"]) == pytest.approx(2 * at(["train.max_steps=10"]))
    assert at(["method=lora"]) < at(["method=dora"])  # DoRA runs its base layers again (dropout > 0)


def test_a_finished_run_calibrates_the_next_prediction(results_dir):
    cfg = compose_config(TINY_MCQ + [f"results_dir={results_dir}"])
    plan = plan_run(cfg)
    cold = predict(plan, results_dir, Target("cpu", machine_fingerprint(), 1))
    assert cold.basis.startswith("cold") and cold.time_error == 0.5
    result = run_config(cfg)
    assert result["env"]["machine"] == machine_fingerprint()
    assert result["cost"]["work"]["train_flops"] == pytest.approx(cold.work.train_flops, rel=1e-6)
    threads = result["env"]["threads"]
    warm = predict(plan, results_dir, Target("cpu", machine_fingerprint(), threads))
    assert warm.basis == "calibrated on 1 finished run of tiny-qwen3 on this machine"
    # the same run on the same machine is predicted as it measured
    assert warm.train_s == pytest.approx(result["timing"]["train_s"], rel=1e-3)
    assert warm.peak_mb == pytest.approx(result["memory"]["peak_rss_mb"], rel=1e-3)
    assert warm.load_s == pytest.approx(result["timing"]["load_s"], rel=1e-3)
    t = result["timing"]  # the rest of the run (tokenizing, its Trainer, saving): what pack=auto saves by packing
    assert warm.setup_s == pytest.approx(t["total_s"] - t["load_s"] - t["train_s"] - t["train_eval_s"] - t["eval_s"],
                                         abs=5e-3)
    assert warm.setup_s > 0 and warm.total_s == pytest.approx(t["total_s"], rel=0.05)
    # twice the steps: twice the training time; another machine's runs do not calibrate this one
    longer = plan_run(compose_config(TINY_MCQ + [f"results_dir={results_dir}", "train.max_steps=8"]))
    assert predict(longer, results_dir, Target("cpu", machine_fingerprint(), threads)).train_s \
        == pytest.approx(2 * warm.train_s, rel=1e-3)
    assert predict(plan, results_dir, Target("cpu", "another machine", threads)).basis.startswith("cold")


def test_the_plan_view_shows_each_runs_cost_and_the_sweeps_total(tmp_path):
    proc = launch(["-m", "lora.r=4,16", *TINY_MCQ, "hydra/launcher=plan", "hydra.launcher.n_jobs=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = next(line for line in proc.stdout.splitlines() if line.startswith("run "))
    assert re.search(r"train\s+whole run\s+peak RSS\s+status", head)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("lora.r=")]
    assert len(rows) == 2 and all(re.search(r"\d+s\s+\d+s\s+[\d,]+ MiB\s+not started", r) for r in rows)
    assert "predicted cost: cold (no finished run on this machine): time within ~50%, peak RSS within ~30%" \
        in proc.stdout
    assert re.search(r"; 2 to run; predicted \d+s for the 2 runs to run, 2 at a time$", proc.stdout.strip())


def test_a_run_that_cannot_fit_the_gpu_is_refused_in_one_line_before_anything_trains(tmp_path):
    """A simulated 64 MiB GPU (tests/hooks/fake_gpus.py): the run at batch 64 is predicted not to fit,
    the one at batch 4 does; nothing is trained, and the refusal names the numbers and what fits."""
    big = ["train.batch_size=64", "train.max_length=256", "task.max_train=64"]
    proc = launch(["-m", "lora.r=4,8", *TINY_MCQ, *big, "hydra/launcher=local"], cwd=tmp_path,
                  env={"LORASWEEP_FAKE_GPUS": "1", "LORASWEEP_FAKE_GPU_MB": "64"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    refusals = [line for line in proc.stderr.splitlines() if "does not fit" in line]
    assert len(refusals) == 2, proc.stderr[-3000:]
    line = next(r for r in refusals if r.startswith("sweep: lora.r=4:"))
    assert re.search(r"predicted peak GPU memory [\d,]+ MiB does not fit the GPU \(Fake GPU\)'s 64 MiB \(lora, "
                     r"train.batch_size=64, train.max_length=256, lora.r=4, model.dtype=float32; cold", line), line
    assert re.search(r"predicted to fit with .*train.batch_size=\d+ \([\d,]+ MiB\)", line), line
    assert "sweep: 2 runs would not fit the GPU; nothing was started" in proc.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*/result.json"))


def test_auto_requests_reach_the_submitted_slurm_jobs(slurm_cluster, tmp_path):
    from test_slurm import SLURM, job_records

    proc = launch(["-m", "lora.r=2,4", *TINY_MCQ, *SLURM, "hydra.launcher.timeout_min=auto",
                   "hydra.launcher.mem_gb=auto"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    asked = re.search(r"SLURM jobs ask for timeout_min=(\d+) \(predicted [\d.]+ min \+ 50%, \+5 min to start\), "
                      r"mem=(\d+)M \(predicted [\d,]+ MiB \+ 25%\); cold", proc.stderr)
    assert asked, proc.stderr[-3000:]
    jobs = {rec["job_id"] for rec in job_records(tmp_path / "results").values()}
    assert len(jobs) == 2
    for job in jobs:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Timelimit,ReqMem", "-j", job],
                             capture_output=True, text=True, check=True).stdout.split()
        limit, mem = out[0].split("|")
        assert limit == f"00:{int(asked.group(1)):02d}:00"
        number, unit = re.fullmatch(r"([\d.]+)([KMGT])n?", mem).groups()  # sacct: 1G, 1300M
        assert float(number) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}[unit] == int(asked.group(2))


def test_the_measured_rate_is_compared_with_the_prediction():
    assert versus_prediction(50, 52, 100) == "as predicted (1m40s)"
    assert versus_prediction(60, 60, 100) == "20% slower than predicted (1m40s)"
    assert versus_prediction(20, 30, 100) == "50% faster than predicted (1m40s)"
    assert versus_prediction(20, None, 100) == versus_prediction(20, 30, None) == ""
    assert versus_prediction(1.5, 0.2, 0.02) == "85x slower than predicted (under 1s)"  # not "8400% slower (0s)"
    assert versus_prediction(0.5, 0.5, 100) == "100x faster than predicted (1m40s)"


def test_the_status_view_compares_a_running_runs_rate_with_its_prediction(tmp_path):
    """A run 100 s into training with 1000 s left, predicted to train in 500 s: 120% slower."""
    from test_plan_launcher import folder, plan_of, write_progress

    store = tmp_path / "results"
    started = (datetime.now().astimezone() - timedelta(seconds=100)).isoformat(timespec="seconds")
    with Claim(folder(1, store)):
        write_progress(folder(1, store), started_at=started, eta_s=1000.0, predicted_s=500.0)
        _, text = plan_of([1], store)
    assert re.search(r"ETA 16m[34]\ds, 120% slower than predicted \(8m20s\), updated \d+s ago$", text, re.M), text


def test_a_packed_run_records_its_work_but_does_not_calibrate(results_dir):
    """A packed run's timing and peak memory are its pack's, shared with the other runs: its result
    records its work (as a run alone does) and calibration leaves it out."""
    from lorasweep.run.calibration import finished
    from lorasweep.run.pack import run_pack

    cfgs = [compose_config(TINY_MCQ + [f"lora.r={r}", f"results_dir={results_dir}"]) for r in (2, 4)]
    packed = run_pack(cfgs)
    assert [r["status"] for r in packed] == ["done", "done"]
    alone = [work(plan_run(cfg), "cpu").as_record() for cfg in cfgs]  # the pack counts its task's rows once, for both
    assert [r["cost"]["work"] for r in packed] == alone and alone[0]["train_flops"] < alone[1]["train_flops"]
    assert finished(str(results_dir)) == ()
    plan = plan_run(compose_config(TINY_MCQ + [f"results_dir={results_dir}"]))
    assert predict(plan, results_dir, Target("cpu", machine_fingerprint(), 1)).basis.startswith("cold")
