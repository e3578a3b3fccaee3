"""hydra.launcher.gpus_per_run=N: one run trained data-parallel on its worker's N GPUs.

No GPU here: LORASWEEP_FAKE_GPUS makes the launcher believe there are some, and the ranks train on
the CPU through gloo, as DDP does there. tests/hooks/sitecustomize.py records which rows each rank
trained on (LORASWEEP_RANK_BATCHES) and makes one rank fail (LORASWEEP_FAIL_RANK).
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
from conftest import TINY_MCQ, TINY_TOPICS, Sweep, alive, compose_config, launch, wait_gone, with_hooks

from lorasweep.config.checks import check_data_parallel
from lorasweep.config.spec import from_config
from lorasweep.errors import ConfigError

RANK_MODULE = "lorasweep.executors.rank"


def stored(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]


def store_files(tmp_path: Path) -> list[str]:
    """Every file in the results store, relative to its run folder (the folder's name differs by nothing here)."""
    return sorted(str(p.relative_to(p.parents[len(p.relative_to(tmp_path / "results").parts) - 2]))
                  for p in (tmp_path / "results").rglob("*") if p.is_file())


def trained(tmp_path, monkeypatch, fake_gpus: str, gpus_per_run: int, args: list[str]) -> tuple[dict, list[dict]]:
    """One tiny run in its own folder under tmp_path: (its result, the rows its ranks trained on)."""
    where = tmp_path / f"gpus{gpus_per_run}"
    where.mkdir()
    batches = where / "batches.jsonl"
    with_hooks(monkeypatch, LORASWEEP_RANK_BATCHES=str(batches))
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", fake_gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc = launch(["-m", *args, f"hydra.launcher.gpus_per_run={gpus_per_run}"], cwd=where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every weight an adapter run trains is used: DDP does not look for unused ones each step (nor warns)
    assert "find_unused_parameters=True" not in proc.stderr
    results = stored(where)
    assert len(results) == 1  # exactly one result.json: rank 0's
    return results[0], [json.loads(line) for line in batches.read_text().splitlines()]


# Dropout 0: a rank's dropout masks are not the single process's, so only then can the losses agree;
# the data order is the same (the same seeded sampler, each global batch split between the ranks).
# Full batches only: the last short batch of an epoch is filled up on N ranks (accelerate's
# even_batches repeats the epoch's first rows), so there the two runs differ.
CLASSIFICATION = [*TINY_TOPICS, "lora.dropout=0", "+model.tiny.hidden_dropout_prob=0",
                  "+model.tiny.attention_probs_dropout_prob=0"]
SFT = [*TINY_MCQ, "lora.dropout=0", "task.max_train=64"]  # trl's own loss on 2 ranks (run/loop.py)


@pytest.mark.parametrize("args", [CLASSIFICATION, SFT], ids=["classification", "sft"])
def test_a_run_on_two_gpus_trains_on_two_ranks_what_one_process_trains(tmp_path, monkeypatch, args):
    batch = compose_config(args)["train"]["batch_size"]
    one, one_batches = trained(tmp_path, monkeypatch, "1", 1, args)
    two, two_batches = trained(tmp_path, monkeypatch, "2", 2, args)

    assert one["status"] == two["status"] == "done"
    assert (one["env"]["data_parallel"], two["env"]["data_parallel"]) == (1, 2)
    assert (one["env"]["cuda_visible_devices"], two["env"]["cuda_visible_devices"]) == ("0", "0,1")
    assert one["timing"]["steps"] == two["timing"]["steps"] == 4  # train.max_steps: the same optimizer steps
    assert one["config"] == two["config"] and one["run_key"] == two["run_key"]  # the same run, on 1 or 2 GPUs

    # each rank trained on half of each global batch, and together on the single process's whole batch
    assert {(b["rank"], b["world"]) for b in two_batches} == {(0, 2), (1, 2)}
    for step in range(1, 5):
        ranks = [b for b in two_batches if b["step"] == step]
        assert sorted(b["rank"] for b in ranks) == [0, 1] and all(len(b["rows"]) == batch // 2 for b in ranks)
        alone = [b for b in one_batches if b["step"] == step]
        assert len(alone) == 1 and len(alone[0]["rows"]) == batch
        assert Counter(ranks[0]["rows"] + ranks[1]["rows"]) == Counter(alone[0]["rows"])

    # the same numbers: the evaluation before training exactly (every rank evaluates the whole set),
    # training up to float rounding (a mean of two halves' means is the whole batch's mean)
    assert one["curve"][0] == two["curve"][0]
    for a, b in zip(one["curve"], two["curve"]):
        assert a["step"] == b["step"]
        assert math.isfinite(b["loss"]) and math.isfinite(b["train_loss"] or 0.0)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        if a["train_loss"] is not None:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert two["metrics"]["train"]["loss"] == pytest.approx(one["metrics"]["train"]["loss"], rel=1e-4)
    assert two["metrics"]["test"]["n"] == one["metrics"]["test"]["n"]

    # rank 0 alone wrote into the store: the files of the single process's run, no more
    assert store_files(tmp_path / "gpus2") == store_files(tmp_path / "gpus1")
    from lorasweep.run.adapters import load_adapted

    folder = next((tmp_path / "gpus2" / "results").glob("*/result.json")).parent
    model, _ = load_adapted(folder)  # the saved adapter loads
    assert model.peft_config["default"].r == two["config"]["lora"]["r"]


@pytest.mark.parametrize("fake, args, message", [
    ("2", ["train.batch_size=7"], "run 1/1 model=tiny-bert task=wordnet_topics train.max_steps=4 train.eval_steps=2 "
     "task.max_train=32 task.max_eval=16 task.max_test=16 train.batch_size=7: invalid: train.batch_size=7 is not "
     "divisible by hydra.launcher.gpus_per_run=2: the batch is the run's whole batch, split evenly between its 2 "
     "ranks; use a multiple of 2"),
    ("2", ["hydra.launcher.pack=2"], "sweep: hydra.launcher.pack=2 cannot be combined with "
     "hydra.launcher.gpus_per_run=2: a pack trains its runs in one process on one GPU, and a run on 2 GPUs trains "
     "alone; use pack=false (default), or gpus_per_run=1; nothing was trained"),
    ("0", [], "sweep: hydra.launcher.gpus_per_run=2 needs 2 GPUs for each run, and this machine has no GPU "
     "(nvidia-smi, CUDA_VISIBLE_DEVICES); use 1; nothing was trained"),
    ("2", ["hydra/sweeper=optuna", "lora.r=choice(2,4)"], "sweep: hydra.launcher.gpus_per_run=2 is not supported by "
     "the Optuna sweeper (hydra/sweeper=optuna): its trials train on one GPU each; use 1 (default), or a grid sweep "
     "(the default sweeper) to train each run data-parallel; nothing was trained"),
])
def test_what_cannot_train_data_parallel_is_refused_before_anything_trains(tmp_path, monkeypatch, fake, args,
                                                                         message):
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc = launch(["-m", *TINY_TOPICS, "hydra.launcher.gpus_per_run=2", *args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("result.json"))
    assert "started" not in proc.stderr  # no run was sent to a worker


def test_a_quantized_base_is_refused_on_several_gpus():
    spec = from_config(compose_config([*TINY_TOPICS, "method=qlora"]))
    check_data_parallel(spec, 1)  # one GPU: as before
    with pytest.raises(ConfigError) as e:
        check_data_parallel(spec, 2)
    assert str(e.value) == ("method=qlora cannot train data-parallel (hydra.launcher.gpus_per_run=2): a quantized "
                            "base is loaded onto one GPU; use gpus_per_run=1, or method=lora/dora")


@pytest.mark.parametrize("rank, reason", [
    (1, "data-parallel rank 1 of 2: RuntimeError: LORASWEEP_FAIL_RANK: rank 1 fails at step 2"),
    (0, "RuntimeError: LORASWEEP_FAIL_RANK: rank 0 fails at step 2"),  # rank 0's own record, as in one process
])
def test_a_failing_rank_fails_the_run_it_does_not_hang(tmp_path, monkeypatch, rank, reason):
    with_hooks(monkeypatch, LORASWEEP_FAIL_RANK=f"{rank}@2")
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc = launch(["-m", *TINY_TOPICS, "hydra.launcher.gpus_per_run=2"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (result,) = stored(tmp_path)
    assert (result["status"], result["reason"]) == ("failed", reason)
    assert result["env"]["data_parallel"] == 2
    folder = next((tmp_path / "results").glob("*/result.json")).parent
    assert f"LORASWEEP_FAIL_RANK: rank {rank} fails at step 2" in (folder / "traceback.txt").read_text()
    assert not (folder / "adapter").exists()
    assert "sweep: 1 runs: 1 failed" in proc.stderr


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_out_of_accelerator_memory_fails_the_run_in_one_line_with_what_to_lower(tmp_path, monkeypatch, rank):
    """As a run in one process that runs out of memory: one line naming the device and the settings that
    drive memory, not a RankFailedError with the rank's exception type inside."""
    with_hooks(monkeypatch, LORASWEEP_FAIL_RANK=f"{rank}@2:oom")
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc = launch(["-m", *TINY_TOPICS, "hydra.launcher.gpus_per_run=2"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    ran_out = f"out of accelerator memory on cuda:{rank} (it tried to allocate 2.00 GiB); to use less memory: "
    (result,) = stored(tmp_path)
    # rank 0's own record, as in one process; another rank's is written in rank 0's place, naming it
    assert result["status"] == "failed"
    recorded = f"AcceleratorMemoryError: {ran_out}"  # as a run in one process records it
    assert result["reason"].startswith(recorded if rank == 0 else f"data-parallel rank 1 of 2: {recorded}"), result
    said = re.search(r"^run 1/1 .*: FAILED after \d+s: (.*)$", proc.stderr, re.M)
    assert said and said.group(1).startswith(f"data-parallel rank {rank} of 2 failed: {ran_out}"), proc.stderr[-3000:]
    assert "RankFailedError" not in proc.stderr and "sweep: 1 runs: 1 failed" in proc.stderr


def test_an_interrupted_sweep_stops_the_ranks_and_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with Sweep(["-m", *TINY_TOPICS, "hydra.launcher.gpus_per_run=2", "train.max_steps=200",
                "train.step_sleep_s=0.2"], cwd=tmp_path) as sweep:
        sweep.wait_for_line(r"train step +2/200")
        ranks = [p for p in psutil.Process(sweep.proc.pid).children(recursive=True)
                 if RANK_MODULE in " ".join(p.cmdline())]
        assert len(ranks) == 2 and all(alive(p) for p in ranks)
        os.killpg(sweep.proc.pid, signal.SIGINT)  # Ctrl-C
        assert sweep.wait() == 130
        wait_gone(ranks, timeout=30)
    assert not stored(tmp_path)  # stopped, not failed: it trains again next time
    assert "failed" not in sweep.output
