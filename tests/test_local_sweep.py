"""Grid sweeps as a user runs them (real multiruns in subprocesses): progress, summary, resume."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY_TOPICS, launch

GRID = ["-m", "lora.r=2,4,8", "lora.proj=qk,v"]


def finished(results_dir):
    """{run folder name: result.json mtime} of the runs that are done."""
    out = {}
    for path in results_dir.glob("*/result.json"):
        if json.loads(path.read_text())["status"] == "done":
            out[path.parent.name] = path.stat().st_mtime_ns
    return out


def test_grid_runs_every_cell_and_a_rerun_trains_nothing(tmp_path):
    proc = launch(GRID + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run 4/6 started: lora.r=4 lora.proj=v" in proc.stderr
    assert "sweep: 6 runs: 6 done; best: " in proc.stderr
    first = finished(tmp_path / "results")
    assert len(first) == 6
    again = launch(GRID + TINY_TOPICS, cwd=tmp_path)
    assert again.returncode == 0
    assert "sweep: 6 runs: 6 already done; best: " in again.stderr
    assert "started" not in again.stderr
    assert finished(tmp_path / "results") == first  # not one result rewritten


def test_interrupted_sweep_keeps_finished_runs_and_resumes(tmp_path):
    slow = TINY_TOPICS + ["train.max_steps=150", "train.eval_steps=50", "task.max_train=256"]
    cmd = [sys.executable, str(ROOT / "launch.py"), *GRID, *slow]
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.time() + 240
    while len(finished(tmp_path / "results")) < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGTERM)  # the driver only: its worker must stop with it
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err[-2000:]
    assert "sweep interrupted" in err and "run the same command again" in err
    before = finished(tmp_path / "results")
    assert 2 <= len(before) < 6
    time.sleep(1)  # a worker that outlived its driver would now write another result
    assert finished(tmp_path / "results") == before
    proc = launch(GRID + slow, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(before)} already done" in proc.stderr and f"{6 - len(before)} done" in proc.stderr
    after = finished(tmp_path / "results")
    assert len(after) == 6 and all(after[k] == v for k, v in before.items())  # none trained twice


def test_parallel_runs_write_logs_and_over_budget_cells_never_start(tmp_path):
    # tiny-bert, head 1,690: qk adds r x (64+64) x 2 x 2 layers, v half that. Under 3,000:
    # qk r=2 (2,714), v r=2 (2,202), v r=4 (2,714); over: qk r=4 (3,738), qk r=8 (5,786), v r=8 (3,738)
    proc = launch(GRID + TINY_TOPICS + ["hydra.launcher.n_jobs=2", "budget.max_trainable=3000"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 6 runs: 3 done, 3 over budget" in proc.stderr
    assert "run 3/6 lora.r=4 lora.proj=qk: over budget, 3,738 trainable parameters exceed" in proc.stderr
    stored = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]
    assert sorted(r["status"] for r in stored) == ["done"] * 3 + ["skipped_budget"] * 3
    # two runs at once share the cores instead of each taking all of them (oversubscription)
    assert {r["env"]["threads"] for r in stored if r["status"] == "done"} == {max(1, os.cpu_count() // 2)}
    logs = list((tmp_path / "results").glob("*/log.txt"))
    assert len(logs) == 3 and all("test accuracy" in log.read_text() for log in logs)


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path):
    # qwen3-0.6b plans fine (its config ships) but its weights cannot be had offline
    proc = launch(["-m", "model=tiny-qwen3,qwen3-0.6b", "task=wordnet_mcq", "train.max_steps=2",
                   "train.eval_steps=2", "task.max_train=8", "task.max_eval=4", "task.max_test=4"], cwd=tmp_path)
    assert proc.returncode != 0  # a failed run fails the sweep, after the others ran
    assert "run 2/2 model=qwen3-0.6b: FAILED" in proc.stderr and "ModelUnavailableError" in proc.stderr
    assert "sweep: 2 runs: 1 done, 1 failed" in proc.stderr


def test_invalid_cells_are_reported_in_one_line_and_the_valid_ones_run(tmp_path):
    proc = launch(["-m", "lora.proj=qk,qkg"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "run 2/2 lora.proj=qkg: invalid: lora.proj='qkg' is invalid for the bert family" in proc.stderr
    assert "sweep: 2 runs: 1 done, 1 invalid" in proc.stderr and len(finished(tmp_path / "results")) == 1


def test_cells_that_are_one_run_train_once_even_in_parallel(tmp_path):
    # method=none ignores lora.r: its two cells have one run key, and two workers must not both train it
    proc = launch(["-m", "method=none,lora", "lora.r=2,4", "hydra.launcher.n_jobs=2"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run 2/4 method=none lora.r=4: the same run as run 1/4 (same run key), trained once" in proc.stderr
    assert "sweep: 4 runs: 3 done, 1 same run; best: " in proc.stderr
    assert proc.stderr.count("started: method=none") == 1
    assert len(finished(tmp_path / "results")) == 3
