"""The plan view's GPU columns (lorasweep.sweep.gpu_usage): which GPU(s) each run used or uses and
its peak GPU memory, from a finished run's result.json and a running run's progress.json, written
here as the project's writers write them; the columns appear only when some run has a GPU."""
import re

from conftest import TINY_TOPICS, launch
from lorasweep.run.claims import Claim
from test_plan_launcher import folder, plan_of, write_progress, write_result_of

DONE = {"reason": "", "objective": {"name": "test.accuracy", "value": 0.623, "direction": "maximize"}}


def env(cuda_visible_devices, device="NVIDIA H100 80GB HBM3"):
    return {"device": device, "host": "gpu-node-1", "cuda_visible_devices": cuda_visible_devices,
            "slurm_job_id": None}


def test_the_plan_view_shows_each_run_s_gpus_and_peak_gpu_memory(tmp_path):
    store = tmp_path / "results"
    write_result_of(1, store, "done", **DONE, env=env("0"), memory={"peak_rss_mb": 2048.0, "peak_gpu_mb": 1234.5})
    write_result_of(2, store, "failed", reason="RuntimeError: disk on fire", env=env("2,3"),
                    memory={"peak_rss_mb": 2048.0, "peak_gpu_mb": 20480.0})
    write_result_of(4, store, "done", **DONE, env=env(None, "cpu"), memory={"peak_rss_mb": 900.0, "peak_gpu_mb": None})
    write_result_of(5, store, "done", **DONE, env=env("-1", "cpu"), memory={"peak_rss_mb": 900.0, "peak_gpu_mb": None})
    with Claim(folder(3, store)):
        write_progress(folder(3, store), gpu="NVIDIA H100 80GB HBM3", cuda_visible_devices="1", peak_gpu_mb=512.0)
        proc = launch(["-m", "lora.r=1,2,3,4,5,6"] + TINY_TOPICS + [f"results_dir={store}", "hydra/launcher=plan"],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(line for line in lines if line.startswith("run "))
    # (each run still to run has its predicted cost, on this machine's CPU: tests/test_cost.py)
    assert re.search(r"  over budget  gpu  peak gpu mem +train +whole run +peak RSS  status$", head), head
    rows = {line.split()[0]: line for line in lines if re.match(r"lora\.r=\d+ ", line)}
    assert re.search(r"  no  +0  +1,234 MiB +done 0\.623$", rows["lora.r=1"]), rows["lora.r=1"]  # 1234.5 rounds to even
    assert re.search(r"  no  +2,3  +20,480 MiB  +\d+s +\d+s +[\d,]+ MiB  failed: RuntimeError: disk on fire$", rows["lora.r=2"])
    assert re.search(r"  no  +1  +512 MiB +running \(", rows["lora.r=3"]), rows["lora.r=3"]
    for cpu in ("lora.r=4", "lora.r=5", "lora.r=6"):  # a CPU run, CUDA_VISIBLE_DEVICES=-1, not started
        assert re.search(r"  no  +(done 0\.623|\d+s +\d+s +[\d,]+ MiB  not started)$", rows[cpu]), rows[cpu]


def test_a_running_run_without_gpu_ids_shows_its_device(tmp_path):
    """A progress file that names the device but not CUDA_VISIBLE_DEVICES (unset: every GPU visible)."""
    store = tmp_path / "results"
    with Claim(folder(1, store)):
        write_progress(folder(1, store), gpu="NVIDIA A100-SXM4-40GB", peak_gpu_mb=None)
        statuses, text = plan_of([1], store)
    row = next(line for line in text.splitlines() if line.startswith("lora.r=1 "))
    assert re.search(r"  no  NVIDIA A100-SXM4-40GB  +running \(", row), row


def test_a_cpu_only_sweep_looks_as_before(tmp_path):
    store = tmp_path / "results"
    write_result_of(1, store, "done", **DONE, env=env(None, "cpu"), memory={"peak_rss_mb": 900.0, "peak_gpu_mb": None})
    with Claim(folder(2, store)):
        write_progress(folder(2, store))  # gpu: "cpu", no CUDA_VISIBLE_DEVICES, no peak_gpu_mb
        _, text = plan_of([1, 2, 3], store)
    head = text.splitlines()[0]
    assert head.split() == ["run", "r", "trainable", "%", "of", "all", "(peft)", "%", "of", "budget", "over",
                            "budget", "status"]
    assert "gpu" not in text.lower().replace("gpu-node", "")


def test_the_plan_takes_the_launchers_gpu_settings_and_marks_a_run_that_cannot_split_its_batch(tmp_path):
    """A command switched to the plan keeps hydra.launcher.gpus_per_run and runs_per_gpu (as the local
    and SLURM launchers take them); a batch gpus_per_run does not divide is that run's error row,
    before any GPU is asked for (the plan machine may have none)."""
    grid = ["-m", "lora.r=2", "train.batch_size=6,8", *[a for a in TINY_TOPICS if not a.startswith("train.batch_size")],
            f"results_dir={tmp_path / 'results'}", "hydra/launcher=plan"]
    proc = launch([*grid, "hydra.launcher.gpus_per_run=4", "hydra.launcher.runs_per_gpu=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("  error: train.batch_size=6: train.batch_size=6 is not divisible by hydra.launcher.gpus_per_run=4: "
            "the batch is the run's whole batch, split evenly between its 4 ranks; use a multiple of 4") in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("total: 2 runs: 1 not started, 1 with errors; 1 to run; predicted ")

    bad = launch([*grid, "hydra.launcher.gpus_per_run=0"], cwd=tmp_path)
    assert bad.returncode == 2 and "plan: hydra.launcher.gpus_per_run=0 is invalid" in bad.stdout, bad.stdout
