"""Grid sweeps as a user runs them (real multiruns in subprocesses): progress, summary, resume."""
import json
import os
import re
import signal
from contextlib import contextmanager

import pytest

from conftest import TINY_TOPICS, Sweep, launch, unslowed, wait_gone, wait_until

GRID = ["-m", "lora.r=2,4,8", "lora.proj=qk,v"]


def finished(results_dir):
    """{run folder name: result.json mtime} of the runs that are done."""
    out = {}
    for path in results_dir.glob("*/result.json"):
        if json.loads(path.read_text())["status"] == "done":
            out[path.parent.name] = path.stat().st_mtime_ns
    return out


@contextmanager
def on_one_core():
    """This process, and every process it starts meanwhile, may run on one core only (as under
    `taskset -c 0`, or in a one-CPU SLURM allocation's cpuset)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def test_grid_runs_every_cell_and_a_rerun_trains_nothing(tmp_path):
    with on_one_core():  # a worker's torch threads are the cores the sweep may use, not the machine's
        proc = launch(GRID + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]
    assert [r["env"]["threads"] for r in stored] == [1] * 6
    assert "run 4/6 started: lora.r=4 lora.proj=v" in proc.stderr
    assert "sweep: 6 runs: 6 done; best: " in proc.stderr
    first = finished(tmp_path / "results")
    assert len(first) == 6
    again = launch(GRID + TINY_TOPICS, cwd=tmp_path)
    assert again.returncode == 0
    assert "sweep: 6 runs: 6 already done; best: " in again.stderr
    assert "started" not in again.stderr
    assert finished(tmp_path / "results") == first  # not one result rewritten


TINY_ANY_STEPS = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")]


def tiny(steps: int, sleep_s: float) -> list[str]:
    """TINY_TOPICS runs of `steps` steps, each step followed by a sleep: a run lasts at least
    steps x sleep_s, so that a test can see it (and its worker) while it trains."""
    return [*TINY_ANY_STEPS, f"train.max_steps={steps}", f"train.step_sleep_s={sleep_s}"]


def test_interrupted_sweep_keeps_finished_runs_and_resumes(tmp_path):
    grid = ["-m", "lora.r=2,4", "lora.proj=qk,v"]
    slow = tiny(8, 0.5)  # after its first step a run has 3.5 s of sleep left: it cannot end before the kill
    with Sweep([*grid, *slow], tmp_path) as sweep:
        _, after = sweep.wait_for_line(r"^run 3/4 started: lora.r=4 lora.proj=qk$")  # runs 1 and 2 are done
        sweep.wait_for_line(r"train step +1/8 ", since=after)  # run 3 trains (one worker: its output is here)
        before, workers = finished(tmp_path / "results"), sweep.workers()
        os.kill(sweep.proc.pid, signal.SIGTERM)  # the driver only: its worker must stop with it
        assert sweep.wait() == 130, sweep.output[-3000:]
    wait_gone(workers.values())  # a worker that outlived its driver would go on and write run 3's result
    assert "sweep interrupted: 2 of 4 runs finished and kept; run the same command again to train the rest" \
        in sweep.output
    # workers are kept across runs: runs 1, 2 and 3 trained in one worker process, started once
    assert len(sweep.seen) == 1, sorted(sweep.seen)
    assert sorted(name.rsplit("-", 1)[0] for name in before) == \
        ["tiny-bert-wordnet_topics-lora-qk-r2", "tiny-bert-wordnet_topics-lora-v-r2"]
    assert finished(tmp_path / "results") == before  # run 3 left no result: it runs again next time
    proc = launch(unslowed([*grid, *slow]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 4 runs: 2 done, 2 already done" in proc.stderr
    assert "run 3/4 started: lora.r=4 lora.proj=qk" in proc.stderr and "run 1/4 started" not in proc.stderr
    again = finished(tmp_path / "results")
    assert len(again) == 4 and all(again[k] == v for k, v in before.items())  # none trained twice


@pytest.mark.parametrize("how", ["ctrl-c", "closed terminal"])
def test_ctrl_c_or_a_closed_terminal_stops_a_parallel_sweep_and_the_rest_runs_later(tmp_path, how):
    # runs 1 and 2 take 2 steps; runs 3 and 4 take 8 steps of 0.4 s, so they train when the signal comes
    args = ["-m", "train.max_steps=2,8", "lora.r=2,4", "hydra.launcher.n_jobs=2", *TINY_ANY_STEPS,
            "train.step_sleep_s=0.4"]
    results = tmp_path / "results"
    with Sweep(args, tmp_path) as sweep:
        run1, run2, run3, run4 = (
            (tmp_path / sweep.wait_for_line(rf"^run {i}/4 started: .* \(log: (.+)/log.txt\)$")[0].group(1)).name
            for i in range(1, 5))
        # run 4 starts once runs 1 and 2 are done; after its first step it has 2.8 s of sleep left
        log4 = results / run4 / "log.txt"
        wait_until(lambda: log4.exists() and "train step " in log4.read_text(), "run 4 to train")
        before, workers = finished(results), sweep.workers()
        if how == "ctrl-c":  # the terminal signals its foreground process group: the driver and its workers
            os.killpg(sweep.proc.pid, signal.SIGINT)
        else:  # the terminal's session ends: SIGHUP to the driver
            os.kill(sweep.proc.pid, signal.SIGHUP)
        code = sweep.wait()
    wait_gone(workers.values())
    assert code == 130, sweep.output[-3000:]
    kept = len(re.findall(r"^run \d/4 .*: done, ", sweep.output, re.M))  # 2, or 3 if run 3 ended just before
    assert f"sweep interrupted: {kept} of 4 runs finished and kept; run the same command again to train the " \
        "rest" in sweep.output
    # workers are kept across runs: the four runs went to two worker processes, started once
    assert len(workers) == 2 and len(sweep.seen) == 2, sorted(sweep.seen)
    # runs 1 and 2 are untouched; run 4 left no result that says done, and no run half a file
    assert {run1, run2} <= before.keys() <= {run1, run2, run3}
    stopped = finished(results)
    assert stopped.items() >= before.items() and stopped.keys() <= {run1, run2, run3}
    assert not list(results.rglob(".result-*.json"))
    proc = launch(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep: 4 runs: {4 - len(stopped)} done, {len(stopped)} already done" in proc.stderr
    assert proc.stderr.count(" started: ") == 4 - len(stopped) and "run 4/4 started" in proc.stderr
    again = finished(results)
    assert len(again) == 4 and again.items() >= stopped.items()  # none trained twice


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
    assert {r["env"]["threads"] for r in stored if r["status"] == "done"} == {max(1, len(os.sched_getaffinity(0)) // 2)}
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
