"""A run's progress.json (lorasweep.run.progress): kept while it trains, read back by the plan view."""
import json
import os
import socket
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch

from lorasweep.run import progress as progress_module
from lorasweep.run.claims import live_holder
from lorasweep.run.lifecycle import run_config
from lorasweep.run.progress import PROGRESS_FILE, eta_seconds, read_progress
from lorasweep.run.progress_file import ProgressFile

from conftest import TINY_TOPICS, compose_config


def test_a_tiny_run_leaves_its_progress_read_back_with_sane_values(results_dir):
    """A real training of 4 steps (evaluations at 2 and 4): looked at mid-run from the sweeper's
    reporter (called at each evaluation, after the callbacks) and at the end."""
    seen = {}

    def reporter(step, metrics):
        folder = next(results_dir.iterdir())
        seen[step] = (read_progress(folder), live_holder(folder), metrics)
        return False

    cfg = compose_config(TINY_TOPICS + [f"results_dir={results_dir}"])
    result = run_config(cfg, reporter=reporter)
    folder = results_dir / f"{result['slug']}-{result['run_key']}"
    assert result["status"] == "done"

    # mid-run, at the evaluation of step 2: its progress, and a live claim (this process's)
    middle, claim, metrics = seen[2]
    assert (middle.step, middle.total_steps) == (2, 4)
    assert middle.data["eval"] == {"metric": "accuracy", "value": metrics["accuracy"], "step": 2}
    # 2 steps left at the rate so far (eta_s is rounded to 0.1 s: a tiny model's steps can be that fast)
    assert middle.data["steps_per_s"] > 0
    assert middle.data["eta_s"] == pytest.approx(2 / middle.data["steps_per_s"], abs=0.06)
    assert claim is not None and claim.owner["pid"] == os.getpid()

    # at the end: the file stays beside the result, which supersedes it
    data = json.loads((folder / PROGRESS_FILE).read_text())
    assert (data["step"], data["total_steps"], data["eta_s"]) == (4, 4, 0.0)
    assert data["host"] == socket.gethostname() and data["pid"] == os.getpid() and data["slurm_job"] is None
    assert data["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    last_eval = result["curve"][-1]
    assert data["eval"] == {"metric": "accuracy", "value": last_eval["accuracy"], "step": 4}
    assert data["train_loss"]["step"] == 4 and data["train_loss"]["value"] > 0  # logged every step here
    started, updated = (datetime.fromisoformat(data[k]) for k in ("started_at", "updated_at"))
    assert started <= updated and started.tzinfo is not None
    assert 0 < data["steps_per_s"]
    assert data["predicted_s"] > 0  # training's predicted seconds (run/predict.py): tests/test_cost.py
    assert read_progress(folder).eta_now() == 0.0
    assert live_holder(folder) is None  # the claim went with the run: the file alone says nothing runs


def state(step, total=50):
    return SimpleNamespace(global_step=step, max_steps=total)


def test_writes_are_throttled_but_every_evaluation_and_the_end_are_written(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    path = tmp_path / PROGRESS_FILE
    callback = ProgressFile(path, every_s=5.0)
    step = lambda: json.loads(path.read_text())["step"]

    callback.on_evaluate(None, state(0), None, metrics={"eval_accuracy": 0.1, "eval_n": 8})  # before training
    assert not path.exists()  # nothing is written before training begins
    callback.on_train_begin(None, state(0), None)
    assert step() == 0 and json.loads(path.read_text())["eval"] == {"metric": "accuracy", "value": 0.1, "step": 0}
    clock[0] += 1.0
    callback.on_step_end(None, state(1), None)  # the first step: written at once, for a first rate
    assert step() == 1
    for s in range(2, 5):  # 3 more steps in 3 s: within the throttle, not written
        clock[0] += 1.0
        callback.on_step_end(None, state(s), None)
    assert step() == 1
    clock[0] += 16.0  # step 10 at 20 s: written, with the rate of the 10 steps since training began
    callback.on_log(None, state(10), None, logs={"loss": 1.25})
    callback.on_step_end(None, state(10), None)
    data = json.loads(path.read_text())
    assert (data["step"], data["steps_per_s"], data["eta_s"]) == (10, 0.5, 80.0)  # 40 steps left at 0.5/s
    assert data["train_loss"] == {"value": 1.25, "step": 10}
    clock[0] += 1.0
    callback.on_evaluate(None, state(11), None, metrics={"eval_token_accuracy": 0.5, "eval_loss": 2.0})
    assert json.loads(path.read_text())["eval"] == {"metric": "token_accuracy", "value": 0.5, "step": 11}
    clock[0] += 1.0
    callback.on_train_end(None, state(50), None)
    assert (step(), json.loads(path.read_text())["eta_s"]) == (50, 0.0)


def test_a_resumed_run_counts_its_rate_from_its_checkpoint_step(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    callback = ProgressFile(tmp_path / PROGRESS_FILE, every_s=0.0)
    callback.on_train_begin(None, state(30), None)  # resumed at step 30 of 50
    clock[0] = 10.0
    callback.on_step_end(None, state(40), None)
    data = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert (data["steps_per_s"], data["eta_s"]) == (1.0, 10.0)


def test_eta_counts_down_from_when_the_file_was_written(tmp_path):
    written = datetime.now().astimezone().timestamp() - 30
    (tmp_path / PROGRESS_FILE).write_text(json.dumps({
        "step": 10, "total_steps": 50, "eta_s": 100.0,
        "updated_at": datetime.fromtimestamp(written).astimezone().isoformat(timespec="seconds")}))
    found = read_progress(tmp_path)
    assert found.eta_now(now=written + 30) == pytest.approx(70.0, abs=1.0)
    assert found.eta_now(now=written + 500) == 0.0  # overdue: never negative


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", '{"step": 3}', '{"step": "x", "total_steps": 4}'])
def test_a_file_that_is_not_a_progress_file_is_no_progress(tmp_path, text):
    (tmp_path / PROGRESS_FILE).write_text(text)
    assert read_progress(tmp_path) is None
    assert read_progress(tmp_path / "missing") is None


def test_eta_needs_a_rate():
    assert eta_seconds(0.0, 0, 10) is None
    assert eta_seconds(10.0, 5, 10) == 20.0 and eta_seconds(10.0, 5, -3) == 0.0
