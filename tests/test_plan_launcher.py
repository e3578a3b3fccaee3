"""hydra/launcher=plan: a sweep's runs counted and printed from configs, nothing trained, and where
each run stands (lorasweep.sweep.status), read from the files in its folder."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from lorasweep.executors import slurm_jobs
from lorasweep.run.claims import CLAIM_FILE, Claim
from lorasweep.run.records import record_worker_death
from lorasweep.run.plan import plan_run
from lorasweep.run.progress import PROGRESS_FILE
from lorasweep.run.store import write_json_atomically, write_result
from lorasweep.sweep.plan_table import format_plan, plan_row, settle_rows

from conftest import TINY_TOPICS, compose_config, launch


def table_rows(stdout):
    return [line for line in stdout.splitlines() if re.match(r"lora\.r=\d+ lora\.proj=", line)]


def test_plan_prints_every_run_and_a_total(tmp_path):
    proc = launch(["-m", "lora.r=4,8,16", "lora.proj=qk,qkvo,v", "model=tiny-qwen3", "task=wordnet_mcq",
                   "budget.max_trainable=4000", "hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    assert len(rows) == 9
    # tiny-qwen3: 2 layers, hidden 64, q 64->64, k 64->32 (2 kv heads x 16): r x (128 + 96) x 2 for qk
    qk4 = next(r for r in rows if r.startswith("lora.r=4 lora.proj=qk "))
    assert "1,792" in qk4 and re.search(r" no  +\S+ +\S+ +[\d,]+ MiB  not started$", qk4)  # its predicted cost
    qkvo16 = next(r for r in rows if r.startswith("lora.r=16 lora.proj=qkvo "))
    assert "OVER" in qkvo16 and re.search(r" OVER +over budget$", qkvo16)  # never trained: no predicted cost
    assert "total: 9 runs: 3 over budget, 6 not started; 6 to run" in proc.stdout
    assert "every run: model=tiny-qwen3 task=wordnet_mcq budget.max_trainable=4000" in proc.stdout
    assert not (tmp_path / "results").exists()  # nothing ran


# -- an Optuna study's plan: the cells it picks from, and what its trials would take --------------------

STUDY = ["-m", "hydra/sweeper=optuna", "lora.r=choice(4,8,16)", "lora.proj=choice(qk,qkvo)", "model=tiny-qwen3",
         "task=wordnet_mcq", "budget.max_trainable=4000", "hydra/launcher=plan"]


def test_an_optuna_study_s_plan_lists_its_cells_and_what_its_trials_would_take(tmp_path):
    """Before, hydra/launcher=plan refused a study ("there is no plan to list")."""
    proc = launch(STUDY + ["hydra.sweeper.n_trials=5", "train.lr=tag(log, interval(1e-4, 1e-3))"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    assert len(rows) == 6 and sum(" OVER " in r for r in rows) == 3, proc.stdout  # r=16 of either set, r=8 qkvo
    assert "  train.lr is drawn from [0.0001, 0.001] (log): planned at 0.0001" in proc.stdout.splitlines()
    assert re.search(r"^study: 5 trials, each a cell of these 6 as its sampler picks \(3 over budget: told pruned, "
                     r"not trained\): \S+( to \S+)? a trial, about \S+( \(\S+ to \S+\))? for the 5, 1 at a time, "
                     r"if each trains a cell still to run$", proc.stdout, re.M), proc.stdout
    assert not (tmp_path / "results").exists()  # nothing trained, no study stored


def test_a_grid_study_s_plan_predicts_what_the_same_grid_does(tmp_path):
    study = launch(STUDY + ["hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=50"], cwd=tmp_path)
    grid = launch(["-m", "lora.r=4,8,16", "lora.proj=qk,qkvo", "model=tiny-qwen3", "task=wordnet_mcq",
                   "budget.max_trainable=4000", "hydra/launcher=plan"], cwd=tmp_path)
    assert study.returncode == 0 and grid.returncode == 0, study.stderr[-2000:] + grid.stderr[-2000:]
    predicted = re.search(r"; predicted (\S+) for the 3 runs to run, 1 at a time$", grid.stdout, re.M).group(1)
    assert (f"study: 6 trials, these 6 cells (the grid sampler) (3 over budget: told pruned, not trained): "
            f"predicted {predicted} for the 3 to run, 1 at a time") in study.stdout.splitlines(), study.stdout
    assert sorted(table_rows(study.stdout)) == sorted(table_rows(grid.stdout))


def test_study_line_is_its_cells_mean_cost_times_n_trials_at_n_jobs():
    from lorasweep.run.cost import Cost
    from lorasweep.sweep.optuna_plan import study_line
    from lorasweep.sweep.optuna_settings import OptunaSettings
    from lorasweep.sweep.plan_table import PlanRow

    def row(seconds):
        return PlanRow("x", cost=Cost(train_s=seconds, eval_s=0, test_s=0, load_s=0, peak_mb=1, device="cpu",
                                      basis="cold", time_error=0.5, memory_error=0.3))

    settings = OptunaSettings.from_config({"n_trials": 10, "n_jobs": 2})
    assert study_line([row(60), row(120), PlanRow("y", over_budget=True)], settings, grid=False) == (
        "study: 10 trials, each a cell of these 3 as its sampler picks (1 over budget: told pruned, not trained): "
        "1m00s to 2m00s a trial, about 7m30s (5m00s to 10m00s) for the 10, 2 at a time, if each trains a cell still to run")


@pytest.mark.parametrize("setting, said", [
    ("hydra.sweeper.pruner=bogus", "sweep: hydra.sweeper.pruner='bogus' is unknown: choose one of none, median, hyperband"),
    ("hydra.sweeper.sampler=grid train.lr=interval(1e-4,1e-3)", "sweep: hydra.sweeper.sampler=grid needs a discrete "
     "space, but train.lr is FloatDistribution"),
    ("lora.r=range(1,1001)", "sweep: the search space has 2,000 cells, more than the 1,000 a plan lists: plan a slice "
     "of it (fewer choices), or run the study"),
])
def test_a_study_s_plan_refuses_what_the_study_would(tmp_path, setting, said):
    proc = launch(STUDY + setting.split(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert said in proc.stderr and proc.stderr.rstrip().endswith("; nothing was trained"), proc.stderr[-2000:]


@pytest.mark.parametrize("plan", [True, False], ids=["plan", "study"])
def test_a_study_with_no_search_space_is_refused(tmp_path, plan):
    proc = launch(["-m", "hydra/sweeper=optuna", "lora.r=4"] + TINY_TOPICS + ["hydra/launcher=plan"] * plan, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("sweep: the Optuna sweeper found no search space: give one, e.g. 'lora.r=choice(4,8,16)' or "
            "hydra.sweeper.params; nothing was trained") in proc.stderr.splitlines(), proc.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_plan_marks_done_runs_and_config_errors(tmp_path):
    assert launch(TINY_TOPICS + ["lora.r=4", "lora.proj=qk"], cwd=tmp_path).returncode == 0
    proc = launch(["-m", "lora.r=4", "lora.proj=qk,qkg"] + TINY_TOPICS + ["hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "total: 2 runs: 1 done, 1 with errors; 0 to run" in proc.stdout
    assert "'g' (MLP gate)" in proc.stdout


def test_share_of_the_model_is_peft_s_trainable_percentage(tmp_path):
    """The `% of all (peft)` column divides by every parameter, the adapter's included, as peft's
    print_trainable_parameters does: RoBERTa-base value-only r=22 prints 0.795% (peft: 0.7952%), not
    0.802% of the base alone; on tiny models, the same digits as peft's count of the built model."""
    import torch

    from lorasweep.model import methods
    from lorasweep.model.loading import build_on_meta
    from lorasweep.run.plan import plan_run
    from lorasweep.sweep.plan_table import _cells, plan_row

    from conftest import compose_config
    from test_params import four_label_task

    column = 3  # run, r, trainable, % of all (peft)
    roberta = compose_config(["model=roberta-base", "lora.proj=v", "lora.r=22", *four_label_task(tmp_path)])
    row = plan_row("roberta", roberta)
    assert (row.trainable, _cells(row)[column]) == (999_172, "0.795%")
    for overrides in (["method=lora", "lora.proj=qkvo"], ["method=dora", "lora.proj=v"], ["method=full"]):
        cfg = compose_config(TINY_TOPICS + overrides)
        plan = plan_run(cfg)
        skeleton = build_on_meta(plan.spec.model, plan.head, plan.task.num_labels)  # a fresh one: peft changes it
        with torch.device("meta"):
            built = methods.prepare(skeleton, plan.spec, plan.head, list(plan.targets))
        trainable, total = methods.count_parameters(built)
        assert _cells(plan_row("x", cfg))[column] == f"{100 * trainable / total:.3f}%", overrides


# -- where each run stands: its result, its claim, its progress, its SLURM job --------------------------

RUNNING = {"step": 120, "total_steps": 500, "train_loss": {"value": 0.5312, "step": 120},
           "eval": {"metric": "accuracy", "value": 0.612, "step": 100}, "host": socket.gethostname(),
           "pid": os.getpid(), "slurm_job": None, "gpu": "cpu", "steps_per_s": 0.38, "eta_s": 1000.0}


def run_cfg(r, store):
    return compose_config(TINY_TOPICS + [f"lora.r={r}", f"results_dir={store}"])


def folder(r, store):
    return plan_run(run_cfg(r, store)).folder(store)


def write_progress(where, **changes):
    """A progress.json as the training loop's ProgressFile writes it, updated now."""
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    write_json_atomically(where / PROGRESS_FILE, {**RUNNING, "started_at": now, "updated_at": now, **changes})


def write_result_of(r, store, status, **fields):
    """A result.json as the run's lifecycle writes it (run/store.write_result)."""
    plan = plan_run(run_cfg(r, store))
    write_result(plan.folder(store), {"run_key": plan.spec.run_key, "slug": plan.spec.slug, "status": status,
                                      "config": plan.spec.defining(), **fields})


def aged(path, seconds):
    """Make `path` look written `seconds` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fake_squeue(bin_dir, lines="", exit_code=0, stderr=""):
    """An `squeue` first on PATH that prints `lines` (id|state, as squeue -h -o %i|%T does)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{lines}'\nprintf '%s' '{stderr}' >&2\nexit {exit_code}\n")
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_the_plan_view_shows_where_each_run_stands(tmp_path, monkeypatch):
    """Ten runs, each in one state, the way the project leaves them: results written by its writers,
    runs in progress as a progress file and a live claim (held by this test process), a SLURM job
    pending in the queue (a stand-in squeue on PATH answers for the cluster), one that left it."""
    store = tmp_path / "results"
    over = plan_run(run_cfg(10, store)).predicted
    assert plan_run(run_cfg(9, store)).predicted < over
    write_result_of(1, store, "done", reason="", objective={"name": "test.accuracy", "value": 0.623,
                                                             "direction": "maximize"})
    write_result_of(2, store, "diverged", reason="the training loss became nan at step 3 (last finite loss "
                    "51903.6 at step 2)", divergence={"step": 3, "loss": "nan", "last_finite_step": 2,
                                                        "last_finite_loss": 51903.6})
    killed = "worker killed by signal 9 (SIGKILL): likely out of memory; its peak RSS was 1.2 GiB"
    record_worker_death(run_cfg(6, store), killed, peak_rss_mb=1228.8)
    write_progress(folder(7, store), pid=dead_pid())  # trained, stopped: no claim
    slurm_jobs.record(folder(5, store), "812_3", tmp_path / ".submitit")
    slurm_jobs.record(folder(8, store), "812_4", tmp_path / ".submitit")
    monkeypatch.setenv("PATH", fake_squeue(tmp_path / "bin", "812_3|PENDING\n812_9|RUNNING\n"))
    starting = folder(4, store)
    write_progress(starting)  # an earlier try's progress: older than the claim taken now
    aged(starting / PROGRESS_FILE, 3600)
    with Claim(folder(3, store)), Claim(starting):
        write_progress(folder(3, store))
        before = sorted(p for p in store.rglob("*"))
        proc = launch(["-m", "lora.r=1,2,3,4,5,6,7,8,9,10"] + TINY_TOPICS
                      + [f"results_dir={store}", f"budget.max_trainable={over - 1}", "hydra/launcher=plan"],
                      cwd=tmp_path)
        assert sorted(p for p in store.rglob("*")) == before  # looked at, nothing written
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if re.match(r"lora\.r=\d+ ", line)}
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    expected = {1: "done 0.623", 2: "diverged at step 3", 4: f"running ({me}), starting",
                5: "queued (SLURM job 812_3, pending)", 6: "failed: worker killed by signal 9 (SIGKILL):...",
                7: "interrupted at step 120/500", 8: "interrupted: SLURM job 812_4 ended", 9: "not started",
                10: "over budget"}
    for r, cell in expected.items():
        assert rows[f"lora.r={r}"].endswith(f"  {cell}"), (r, rows[f"lora.r={r}"])
    # running: where, step/total and the ETA counted down from the file's 1000 s (a few seconds ago)
    assert re.search(rf"  running \({me}\) step 120/500, ETA 1[56]m\d\ds$", rows["lora.r=3"]), rows["lora.r=3"]
    assert re.search(rf"^  lora\.r=3: being trained by {me}, since [\d:]+: step 120/500, loss 0\.5312 \(step 120\), "
                     rf"eval accuracy 0\.612 \(step 100\), ETA 1[56]m\d\ds, updated \d+s ago$", proc.stdout, re.M)
    assert f"  lora.r=6: failed: {killed}; it trains again" in proc.stdout
    assert re.search(r"^  lora\.r=7: interrupted at step 120/500: pid \d+ on \S+ last wrote its progress at "
                     r"[\d-]+ [\d:]+ and holds no claim now; it trains again$", proc.stdout, re.M)
    assert proc.stdout.strip().splitlines()[-1].startswith(
        "total: 10 runs: 1 done, 1 diverged, 2 running, 1 queued, 1 failed, 2 interrupted, 1 over budget, "
        "1 not started; 4 to run; predicted ")  # the 4 runs' predicted time: tests/test_cost.py


def plan_of(runs, store):
    """{r: status} of the plan view's rows, in this process (as the plan launcher builds them)."""
    rows = settle_rows([plan_row(f"lora.r={r}", run_cfg(r, store)) for r in runs])
    return {r: row.status for r, row in zip(runs, rows)}, format_plan(rows)


def test_the_newest_file_of_a_run_says_what_became_of_it(tmp_path):
    """A failed run trained again and interrupted is interrupted; a run interrupted and then failed is
    failed; a claim whose owner died before its first step is an interrupted run, not a running one."""
    store = tmp_path / "results"
    record_worker_death(run_cfg(1, store), "worker killed by signal 9 (SIGKILL)")
    aged(folder(1, store) / "result.json", 60)
    write_progress(folder(1, store))  # trained again after the failure, and stopped
    write_progress(folder(2, store))
    aged(folder(2, store) / PROGRESS_FILE, 60)
    record_worker_death(run_cfg(2, store), "RuntimeError: disk on fire")
    gone = folder(3, store)
    gone.mkdir(parents=True)
    (gone / CLAIM_FILE).write_text(json.dumps({"token": "theirs", "host": socket.gethostname(), "pid": dead_pid(),
                                               "pid_started": time.time(), "since": time.time()}))
    statuses, text = plan_of([1, 2, 3], store)
    assert [statuses[r].cell for r in (1, 2, 3)] == ["interrupted at step 120/500", "failed: RuntimeError: disk on fire",
                                                     "interrupted before training"]
    assert text.splitlines()[-1] == "total: 3 runs: 1 failed, 2 interrupted; 3 to run"


@pytest.mark.parametrize("squeue, cell", [
    (None, "submitted (SLURM job 812_3)"),  # no squeue on PATH
    (dict(exit_code=1, stderr="squeue: error: Unable to contact slurm controller"), "submitted (SLURM job 812_3)"),
    (dict(exit_code=1, stderr="slurm_load_jobs error: Invalid job id specified"), "interrupted: SLURM job 812_3 ended"),
    (dict(lines="812_3|RUNNING\n"), "starting (SLURM job 812_3, running)"),
    (dict(lines="812_3|PENDING\n"), "queued (SLURM job 812_3, pending)"),
], ids=["no squeue", "squeue fails", "gone from the queue", "job started", "pending"])
def test_a_run_submitted_to_slurm_is_as_its_queue_says(tmp_path, monkeypatch, squeue, cell):
    store = tmp_path / "results"
    slurm_jobs.record(folder(1, store), "812_3", tmp_path / ".submitit")
    if squeue is None:
        empty = tmp_path / "empty"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    else:
        monkeypatch.setenv("PATH", fake_squeue(tmp_path / "bin", **squeue))
    statuses, _ = plan_of([1], store)
    assert statuses[1].cell == cell


def test_a_job_submitted_after_a_failure_is_queued_and_one_before_it_is_not(tmp_path, monkeypatch):
    store = tmp_path / "results"
    monkeypatch.setenv("PATH", fake_squeue(tmp_path / "bin", "812_3|PENDING\n"))
    for r, failed_first in ((1, True), (2, False)):
        if failed_first:
            record_worker_death(run_cfg(r, store), "RuntimeError: disk on fire")
            aged(folder(r, store) / "result.json", 60)
        slurm_jobs.record(folder(r, store), "812_3", tmp_path / ".submitit")
        if not failed_first:
            aged(folder(r, store) / slurm_jobs.JOB_FILE, 60)
            record_worker_death(run_cfg(r, store), "RuntimeError: disk on fire")
    statuses, _ = plan_of([1, 2], store)
    assert (statuses[1].cell, statuses[2].cell) == ("queued (SLURM job 812_3, pending)",
                                                    "failed: RuntimeError: disk on fire")


def test_squeue_is_not_waited_for_beyond_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_squeue(tmp_path / "bin", "812_3|PENDING\n"))
    # an squeue that answers only after 30 s: waited for, it would say the job is pending; not waited
    # for beyond the timeout, the queue is unknown (None). The answer tells which, not a clock.
    (tmp_path / "bin" / "squeue").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\nprint('812_3|PENDING')\n")
    assert slurm_jobs.queue_states(["812_3"], timeout_s=0.5) is None
    assert slurm_jobs.queue_states([]) == {}
