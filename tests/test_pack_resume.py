"""A pack's checkpoints (train.save_steps): a pack killed after one goes on from it and ends as a pack
never killed; a run that left the pack before stays as it ended; a run goes on alone from its pack's
checkpoint (the Trainer's own format)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from conftest import compose_config, with_hooks
from safetensors.torch import load_file

from lorasweep.config.spec import from_config
from lorasweep.errors import WorkerDiedError
from lorasweep.executors.local import LocalExecutor
from lorasweep.executors.worker import pack_task
from lorasweep.run.lifecycle import run_config
from lorasweep.run.pack import run_pack
from lorasweep.run.store import run_dir
from lorasweep.sweep.packs import per_run

# 6 batches an epoch, 8 steps: the checkpoint of step 4 is mid-epoch (its data position: 4 batches
# of epoch 0 skipped), and the resumed pack crosses into epoch 1. Dropout 0 in the base model.
STEPS = ["model=tiny-bert", "task=wordnet_topics", "train.max_steps=8", "train.eval_steps=4", "train.save_steps=4",
         "train.batch_size=4", "task.max_train=24", "task.max_eval=8", "task.max_test=8",
         "+model.tiny.hidden_dropout_prob=0", "+model.tiny.attention_probs_dropout_prob=0"]
# the second diverges at lr=1e4 (step 3), before the checkpoint; the third keeps LoRA dropout: the
# pack's random stream is resumed as saved, so even its masks are those of the pack never killed
RUNS = [["lora.r=2", "lora.proj=qk", "train.lr=1e-3", "lora.dropout=0"],
        ["lora.r=4", "lora.proj=qkvo", "train.lr=1e4", "lora.dropout=0"],
        ["lora.r=8", "lora.proj=v", "train.lr=2e-3", "lora.dropout=0.1"]]


def _configs(results: Path) -> list[dict]:
    return [compose_config([*STEPS, *run, f"results_dir={results}"]) for run in RUNS]


def _folder(cfg: dict) -> Path:
    spec = from_config(cfg)
    return run_dir(Path(cfg["results_dir"]), spec.slug, spec.run_key)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_a_pack_killed_after_a_checkpoint_goes_on_from_it_and_ends_as_one_never_killed(tmp_path, monkeypatch):
    whole = run_pack(_configs(tmp_path / "whole"))
    assert [r["status"] for r in whole] == ["done", "diverged", "done"]
    assert whole[1]["divergence"]["step"] < 4 and "resumed_from_step" not in whole[0]

    cfgs = _configs(tmp_path / "killed")
    keys, folders = [from_config(cfg).run_key for cfg in cfgs], [_folder(cfg) for cfg in cfgs]
    with_hooks(monkeypatch, LORASWEEP_KILL_PACK_AT="6")  # its worker is SIGKILLed before step 6
    with LocalExecutor(n_jobs=1) as executor:
        outcomes = per_run(executor.submit_many([pack_task(cfgs, folders)])[0], keys)
    assert [isinstance(o.exception(), WorkerDiedError) for o in outcomes] == [True, False, True]
    diverged = outcomes[1].result()
    assert diverged["status"] == "diverged" and diverged["curve"] == whole[1]["curve"]
    assert not (folders[1] / "trainer").exists()  # it left the pack: no checkpoint of it
    for folder in folders[::2]:
        assert sorted(p.name for p in (folder / "trainer").iterdir()) == ["checkpoint-4", "lorasweep_curve.json"]
    alone_store = tmp_path / "alone"  # a copy of the store as the kill left it, for a run going on alone
    shutil.copytree(tmp_path / "killed", alone_store)
    left = (folders[1] / "result.json").read_text()

    # the pack again, as a requeued SLURM job runs it (the same command sends only the runs left to train)
    resumed = run_pack(cfgs)
    assert resumed[1] == json.loads(left) and (folders[1] / "result.json").read_text() == left  # as it ended
    for r, w, folder in zip(resumed[::2], whole[::2], folders[::2]):
        assert r["status"] == "done" and r["resumed_from_step"] == 4
        a, b = _adapter(folder), _adapter(tmp_path / "whole" / folder.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder.name
        assert r["curve"] == w["curve"] and [c["step"] for c in r["curve"]] == [0, 4, 8]
        assert r["metrics"] == w["metrics"]
        assert not (folder / "trainer").exists()  # its result is written: its checkpoints went

    # a run goes on alone (the Trainer) from its pack's checkpoint, to the adapter its pack ends with
    cfg = {**cfgs[0], "results_dir": str(alone_store)}
    alone = run_config(cfg)
    assert alone["status"] == "done" and alone["resumed_from_step"] == 4 and "pack" not in alone
    a, b = _adapter(_folder(cfg)), _adapter(tmp_path / "whole" / folders[0].name)
    worst = max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)
    assert worst < 1e-4  # the pack's larger GEMMs round differently from a run alone's (tests/test_pack.py)


def test_a_packs_runs_go_on_together_from_the_newest_step_most_of_them_hold():
    from lorasweep.run.pack_checkpoints import resume_groups

    assert resume_groups([[4], [4], [4]]) == [(4, [0, 1, 2])]
    assert resume_groups([[], []]) == [(0, [0, 1])]
    # killed while the pack saved step 4: one run has it, the other only the step before
    assert resume_groups([[4, 2], [2]]) == [(2, [0, 1])]
    # a run with no checkpoint (trained elsewhere before, or new) beside a pack's runs: apart
    assert resume_groups([[4], [], [4]]) == [(4, [0, 2]), (0, [1])]
    assert resume_groups([[6], [2]]) == [(6, [0]), (2, [1])]
