"""Resuming a run from its checkpoints (train.save_steps) after the attempt before it was cut short."""
from __future__ import annotations

import errno

import pytest
from transformers import TrainerState

from lorasweep.run.lifecycle import run_config

from conftest import TINY_TOPICS, compose_config

# 6 steps, evaluated and checkpointed every 2
RESUMABLE = TINY_TOPICS + ["train.max_steps=6", "train.save_steps=2"]


def test_a_checkpoint_whose_trainer_state_was_cut_short_is_discarded_and_the_one_before_resumed(
        results_dir, monkeypatch, capsys):
    """A full disk while the Trainer writes checkpoint-4's trainer_state.json leaves it empty; the
    next attempt resumed from it and failed to read it, every time."""
    write = TrainerState.save_to_json

    def full_disk_at_step_4(self, path):
        if self.global_step == 4:
            open(path, "w").close()  # opened (created, empty), then the write finds no room
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return write(self, path)

    cfg = compose_config(RESUMABLE + [f"results_dir={results_dir}"])
    monkeypatch.setattr(TrainerState, "save_to_json", full_disk_at_step_4)
    with pytest.raises(Exception, match="No space left on device"):
        run_config(cfg)
    monkeypatch.setattr(TrainerState, "save_to_json", write)  # room again
    folder = next(results_dir.iterdir())
    assert (folder / "trainer" / "checkpoint-4" / "trainer_state.json").read_text() == ""
    capsys.readouterr()

    result = run_config(cfg)
    assert result["status"] == "done" and result["resumed_from_step"] == 2
    assert [p["step"] for p in result["curve"]] == [0, 2, 4, 6]
    said = capsys.readouterr().err
    assert "checkpoint-4/trainer_state.json cannot be read (JSONDecodeError" in said
    assert "checkpoint discarded" in said and "resuming from step 2" in said


def test_a_run_stopped_after_training_resumes_from_its_last_checkpoint_not_step_0(results_dir, monkeypatch):
    """Stopped while its adapter is saved (a kill, a full disk, a failing test evaluation): the
    checkpoints were deleted as training ended, and the next attempt trained from step 0."""
    from lorasweep.model import methods

    save = methods.save_adapter

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped while saving the adapter")

    cfg = compose_config(RESUMABLE + [f"results_dir={results_dir}"])
    monkeypatch.setattr(methods, "save_adapter", stopped)
    with pytest.raises(RuntimeError, match="stopped while saving"):
        run_config(cfg)
    folder = next(results_dir.iterdir())
    assert [p.name for p in (folder / "trainer").glob("checkpoint-*")] == ["checkpoint-6"]
    monkeypatch.setattr(methods, "save_adapter", save)

    result = run_config(cfg)
    assert result["status"] == "done" and result["resumed_from_step"] == 6
    assert not (folder / "trainer").exists()  # the result is written: the checkpoints went
    # the run it would have been uninterrupted: 6 steps, not a 7th (the Trainer resumed at its last step trains one more)
    alone = run_config(compose_config(RESUMABLE + [f"results_dir={results_dir}-alone"]))
    assert result["curve"] == alone["curve"] and [p["step"] for p in result["curve"]] == [0, 2, 4, 6]
    assert result["metrics"]["test"] == alone["metrics"]["test"]


def test_a_run_killed_as_its_checkpoint_is_saved_resumes_with_its_whole_curve(results_dir, monkeypatch):
    """Killed right after the Trainer wrote checkpoint-4's trainer_state.json: the curve file, written
    after it, was missing there, and the resumed run's curve lost the points before step 4."""
    write = TrainerState.save_to_json

    def killed_after_step_4(self, path):
        write(self, path)
        if self.global_step == 4:
            raise RuntimeError("killed")

    cfg = compose_config(RESUMABLE + [f"results_dir={results_dir}"])
    monkeypatch.setattr(TrainerState, "save_to_json", killed_after_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        run_config(cfg)
    monkeypatch.setattr(TrainerState, "save_to_json", write)

    result = run_config(cfg)
    assert result["status"] == "done" and result["resumed_from_step"] == 4
    alone = run_config(compose_config(RESUMABLE + [f"results_dir={results_dir}-alone"]))
    assert [p["step"] for p in result["curve"]] == [0, 2, 4, 6]
    assert result["curve"] == alone["curve"]
