"""The GPU tier's runs (`pytest -m gpu`; skipped, with the reason, without CUDA: tests/gpu_tier.py):
what only a CUDA machine shows. Workers placed on the GPUs nvidia-smi lists (no LORASWEEP_FAKE_GPUS);
a real CUDA out-of-memory error (the device filled, its allocator refusing) failing its run with the
device's own figures, and its memory given back to the next run; quantized bases (bitsandbytes); and
training under the Trainer's bf16 autocast.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MCQ, TINY_TOPICS, compose_config, launch
from lorasweep.errors import AcceleratorMemoryError
from lorasweep.executors import gpus
from lorasweep.run.lifecycle import run_config

from gpu_tier import MIB, device_left_with, peak_of, room_between, settle, setting

pytestmark = pytest.mark.gpu

def _run(overrides: list[str], results: Path) -> dict:
    return run_config(compose_config([*overrides, f"results_dir={results}"]))


TINY = setting(TINY_TOPICS, "train.max_steps=2")


# --- placement -------------------------------------------------------------------------------------

def test_workers_are_placed_on_the_gpus_nvidia_smi_lists(tmp_path, monkeypatch):
    """The real count (nvidia-smi -L, with no test hook pretending), the GPUs a user's
    CUDA_VISIBLE_DEVICES leaves, and a 2-worker sweep on them whose runs train there."""
    monkeypatch.delenv("LORASWEEP_FAKE_GPUS", raising=False)  # here and in the sweep's processes
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = gpus.gpu_count()
    assert count >= torch.cuda.device_count() > 0
    visible = gpus.visible_gpus()
    assert len(visible) == torch.cuda.device_count()  # the GPUs torch sees are the ones workers are given
    if listed is None:
        assert visible == [str(i) for i in range(count)]
    store = tmp_path / "results"
    proc = launch(["-m", "train.lr=0.001,0.002", *TINY, "hydra.launcher.n_jobs=2", "hydra.launcher.runs_per_gpu=2",
                   f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in sorted(store.glob("*/result.json"))]
    assert [r["status"] for r in results] == ["done", "done"]
    # two slots round-robin over the GPUs: the first two, or the one GPU twice
    assert sorted(r["env"]["cuda_visible_devices"] for r in results) == sorted([visible[0], visible[1 % len(visible)]])
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    for r in results:
        assert r["env"]["device"] in names
        assert r["memory"]["peak_gpu_mb"] > 0


# --- a real out-of-memory error --------------------------------------------------------------------

SMALL = TINY_TOPICS
# the same task on a wider bert (hidden 1024, MLP 4096) stepping 128 glosses at once: GiBs of activations
LARGE = setting(TINY_TOPICS, "model.tiny.hidden_size=1024", "model.tiny.intermediate_size=4096",
                "train.batch_size=128", "task.max_train=256", "train.eval_batch_size=16")
OOM_REASON = re.compile(r"^out of accelerator memory on cuda:0 \((?P<name>.+), [\d.]+ GiB free of [\d.]+ GiB, "
                        r"it tried to allocate [\d.]+ [KMGT]?i?B\); to use less memory: a smaller train\.batch_size")


def test_a_run_out_of_gpu_memory_fails_alone_and_gives_its_memory_back(tmp_path):
    """A run whose step does not fit on the (filled) GPU fails with CUDA's own error said in one line,
    recorded; the memory it held is back once it has failed, and the next run in the same process
    trains. Both runs are measured first, unfilled, for a limit between them."""
    _, small, _ = peak_of(lambda: _run(SMALL, tmp_path / "measure-small"))
    large_result, _, large = peak_of(lambda: _run(LARGE, tmp_path / "measure-large"))
    assert large_result["status"] == "done"
    store = tmp_path / "results"
    with device_left_with(room_between(small, large, "a small and a large run")):
        assert _run(SMALL + ["train.lr=0.002"], store)["status"] == "done"
        before = torch.cuda.memory_allocated()
        with pytest.raises(AcceleratorMemoryError) as e:
            _run(LARGE + ["train.lr=0.002"], store)
        said = str(e.value)
        del e
        settle()
        assert torch.cuda.memory_allocated() <= before + 64 * MIB  # its model, optimizer and activations: gone
        after = _run(SMALL + ["train.lr=0.003"], store)
    match = OOM_REASON.match(said)
    assert match and match["name"] == torch.cuda.get_device_name(0), said
    failed = [json.loads(f.read_text()) for f in store.glob("*/result.json")]
    failed = [r for r in failed if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == f"AcceleratorMemoryError: {said}"
    folder = store / f"{failed[0]['slug']}-{failed[0]['run_key']}"
    assert "torch.OutOfMemoryError: CUDA out of memory" in (folder / "traceback.txt").read_text()
    assert not (folder / "adapter").exists()
    assert after["status"] == "done" and math.isfinite(after["metrics"]["train"]["loss"])


# --- quantized bases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["qlora", "qlora8"])
def test_a_quantized_base_trains_the_adapters_lora_would(method, tmp_path):
    """bitsandbytes' 4-bit (qlora) and 8-bit (qlora8) base: the adapters lora trains (the same count,
    predicted before loading), trained (B moved from its zeros), and the memory the base saved."""
    lora = _run(TINY_MCQ + ["method=lora"], tmp_path / "results")
    quantized = _run(TINY_MCQ + [f"method={method}"], tmp_path / "results")
    assert quantized["status"] == "done", quantized.get("reason")
    p = quantized["params"]
    assert p["trainable"] == p["predicted"] == lora["params"]["trainable"]
    assert p["adapted_modules"] == lora["params"]["adapted_modules"]
    assert quantized["memory"]["saved_vs_lora_mb"] > 0
    assert quantized["memory"]["base_weights_mb"] < lora["memory"]["base_weights_mb"]
    assert math.isfinite(quantized["metrics"]["train"]["loss"]) and math.isfinite(quantized["metrics"]["test"]["loss"])
    adapter = load_file(tmp_path / "results" / f"{quantized['slug']}-{quantized['run_key']}" / "adapter"
                        / "adapter_model.safetensors")
    b = [t for name, t in adapter.items() if "lora_B" in name]
    assert b and all(t.abs().max() > 0 for t in b)


# --- bf16 autocast -------------------------------------------------------------------------------------

@contextlib.contextmanager
def linear_forwards(seen: list):
    """Every training-mode nn.Linear forward with gradients inside: (autocast on for CUDA, its dtype,
    the output's dtype and device)."""
    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training and torch.is_grad_enabled():
            seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), output.dtype,
                         output.device.type))
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("overrides", [TINY_TOPICS, TINY_MCQ], ids=["classification", "sft"])
def test_a_run_trains_under_bf16_autocast_on_the_gpu(overrides, tmp_path):
    seen: list = []
    with linear_forwards(seen):
        result = _run(overrides, tmp_path / "results")
    assert result["status"] == "done" and math.isfinite(result["metrics"]["train"]["loss"])
    assert result["env"]["device"] == torch.cuda.get_device_name(0) and result["memory"]["peak_gpu_mb"] > 0
    assert seen and set(seen) == {(True, torch.bfloat16, torch.bfloat16, "cuda")}


def test_a_bf16_base_trains_float32_adapters_under_autocast(tmp_path):
    """model.dtype=bfloat16 (a causal-LM adapter run): the base held in half the memory, its
    adapters float32 and saved so."""
    fp32 = _run(TINY_MCQ, tmp_path / "results")
    bf16 = _run(TINY_MCQ + ["model.dtype=bfloat16"], tmp_path / "results")
    assert bf16["status"] == "done" and math.isfinite(bf16["metrics"]["train"]["loss"])
    assert bf16["memory"]["base_weights_mb"] == pytest.approx(fp32["memory"]["base_weights_mb"] / 2, abs=0.1)
    adapter = load_file(tmp_path / "results" / f"{bf16['slug']}-{bf16['run_key']}" / "adapter" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    # the autocast rounds the float32 base to bf16 for every matmul already: the two runs stay close
    assert bf16["metrics"]["test"]["loss"] == pytest.approx(fp32["metrics"]["test"]["loss"], rel=0.01)
