"""Packs (several runs trained at once over one frozen base): each run's result is the one it has alone.

Every test trains the same runs twice through the public entry points, alone (run_config, the real
Trainer) and packed (run_pack), on tiny random models of each family with real peft adapters, and
compares the saved adapters and the metrics.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config
from safetensors.torch import load_file

from lorasweep.run.lifecycle import run_config
from lorasweep.run.pack import run_pack

STEPS = ["train.max_steps=20", "train.eval_steps=10", "train.batch_size=4", "task.max_train=40",
         "task.max_eval=12", "task.max_test=16", "task=wordnet_topics"]  # 2 epochs of 10 steps
# dropout 0 everywhere (LoRA's and the base model's): a run's masks in a pack are not its masks alone
NO_DROPOUT = {"tiny-bert": ["+model.tiny.hidden_dropout_prob=0", "+model.tiny.attention_probs_dropout_prob=0"],
              "tiny-gpt2": ["+model.tiny.resid_pdrop=0", "+model.tiny.embd_pdrop=0", "+model.tiny.attn_pdrop=0"],
              "tiny-llama": [], "tiny-qwen3": []}
# mixed ranks, projections, learning rates, methods, weight decay, warmup and seeds
RUNS = {"tiny-bert": [["lora.r=2", "lora.proj=qk", "train.lr=1e-3"],
                      ["lora.r=4", "lora.proj=qkvo", "train.lr=3e-3", "method=dora", "train.seed=1"],
                      ["lora.r=8", "lora.proj=vud", "train.lr=2e-3", "method=rslora", "train.weight_decay=0.1"],
                      ["lora.r=4", "lora.proj=q", "train.lr=5e-3", "train.warmup_ratio=0.2"]],
        "tiny-gpt2": [["lora.r=2", "lora.proj=qkv", "train.lr=1e-3"],
                      ["lora.r=4", "lora.proj=qkvo", "train.lr=3e-3", "method=dora"],
                      ["lora.r=8", "lora.proj=ud", "train.lr=2e-3", "train.seed=2"]]}
RUNS["tiny-llama"] = RUNS["tiny-qwen3"] = [["lora.r=2", "lora.proj=qk", "train.lr=1e-3"],
                                           ["lora.r=4", "lora.proj=qkvogud", "train.lr=3e-3", "method=dora"],
                                           ["lora.r=8", "lora.proj=vo", "train.lr=2e-3", "train.seed=1"]]
TOLERANCE = 1e-4  # relative to the tensor's largest value: the pack's larger GEMMs may round differently


def _configs(model: str, results: Path, extra: list[str] = ()) -> list[dict]:
    return [compose_config([f"model={model}", *STEPS, "lora.dropout=0", *NO_DROPOUT[model], *run, *extra,
                            f"results_dir={results}"]) for run in RUNS[model]]


def _largest_difference(alone: Path, packed: Path) -> float:
    a, p = load_file(alone / "adapter" / "adapter_model.safetensors"), load_file(packed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == p.keys()
    return max(((a[k] - p[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)


@pytest.mark.parametrize("model", list(RUNS))
def test_a_packed_run_trains_as_it_would_alone(model, tmp_path, capsys):
    alone = [run_config(cfg) for cfg in _configs(model, tmp_path / "alone")]
    packed = run_pack(_configs(model, tmp_path / "packed"))
    worst = 0.0
    for a, p in zip(alone, packed):
        assert p["status"] == a["status"] == "done"
        assert p["run_key"] == a["run_key"]
        assert p["params"] == a["params"]
        assert p["pack"]["size"] == len(alone) and p["pack"]["runs"] == [r["run_key"] for r in alone]
        worst = max(worst, _largest_difference(tmp_path / "alone" / Path(a["slug"] + "-" + a["run_key"]),
                                               tmp_path / "packed" / Path(p["slug"] + "-" + p["run_key"])))
        assert p["metrics"]["test"]["accuracy"] == a["metrics"]["test"]["accuracy"]
        assert p["metrics"]["test"]["loss"] == pytest.approx(a["metrics"]["test"]["loss"], rel=TOLERANCE)
        assert p["metrics"]["train"]["loss"] == pytest.approx(a["metrics"]["train"]["loss"], rel=TOLERANCE)
        assert [c["step"] for c in p["curve"]] == [c["step"] for c in a["curve"]] == [0, 10, 20]
        for pc, ac in zip(p["curve"], a["curve"]):
            assert pc["accuracy"] == ac["accuracy"]
            assert pc["loss"] == pytest.approx(ac["loss"], rel=TOLERANCE)
            assert (pc["train_loss"] is None) == (ac["train_loss"] is None)
            if ac["train_loss"] is not None:
                assert pc["train_loss"] == pytest.approx(ac["train_loss"], rel=TOLERANCE)
    print(f"{model}: largest relative difference of a packed adapter from its run alone: {worst:.2e}")
    assert worst < TOLERANCE
