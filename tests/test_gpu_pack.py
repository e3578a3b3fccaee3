"""The GPU tier's packs (`pytest -m gpu`; skipped, with the reason, without CUDA: tests/gpu_tier.py).

On a GPU both a pack and its runs alone train under bf16 autocast, so a packed run is its run alone
up to bf16 rounding, not float32's: each way a pack's layers can apply the adapters
(train.pack_product: grouped, batched, loop) is compared within bounds derived from how far
bf16 moves these very runs from float32 (gpu_tier.bf16_bound of the spreads below). Also: a pack
trains under the autocast, and a pack too big for the (filled) GPU trains again in halves.
"""
from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from gpu_tier import (MIB, PACK_CASES, bf16_bound, device_left_with, folder, loss_spread, pack_configs, peak_of,
                      room_between, setting, spreads)
from lorasweep.run.lifecycle import run_config
from lorasweep.run.pack import run_pack
from test_pack import RUNS, STEPS, _largest_difference

pytestmark = pytest.mark.gpu

# The spreads (gpu_tier.spreads: bench/bf16_spread.py's kept measurements, on the CPU 2026-12-05:
# adapters 0.253 and 0.386, losses 6.7e-5 and 8.0e-5, classification and SFT). The adapters move as
# far as their own size (B starts at zero and AdamW's first steps follow the sign of its gradients,
# which bf16 flips where they are near zero): their bound catches only a gross error, such as rows
# through another run's adapter. The losses move by 1e-4 at most (the runs' training moves them by
# 5e-3): their bound is the sharp one.


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """case -> [(result, its results store)] of each run trained alone on the GPU, once per module."""
    done = {}

    def get(case: str):
        if case not in done:
            store = tmp_path_factory.mktemp(f"alone-{case}")
            done[case] = [(run_config(cfg), store) for cfg in pack_configs(case, store)]
        return done[case]
    return get


@pytest.mark.parametrize("path", ["grouped", "batched", "loop"])
@pytest.mark.parametrize("case", PACK_CASES)
def test_a_packed_run_trains_as_alone_within_bf16_rounding(case, path, alone, tmp_path):
    spread = spreads(f"pack {case}")
    adapter_spread, loss = spread["adapter"], spread["loss"]
    runs = alone(case)
    packed = run_pack(pack_configs(case, tmp_path, [f"train.pack_product={path}"]))
    worst_adapter = worst_loss = 0.0
    for (a, store), p in zip(runs, packed):
        assert p["status"] == a["status"] == "done"
        assert p["run_key"] == a["run_key"] and p["params"] == a["params"]
        assert p["pack"]["size"] == len(runs) and path in p["pack"]["product"]  # the way its layers took
        assert [c["step"] for c in p["curve"]] == [c["step"] for c in a["curve"]]
        worst_adapter = max(worst_adapter, _largest_difference(folder(a, store), folder(p, tmp_path)))
        worst_loss = max(worst_loss, loss_spread(a, p))
    print(f"{case}, {path} path: a packed run's largest difference from alone: adapter {worst_adapter:.2e} "
          f"(bound {bf16_bound(adapter_spread):.2e}), losses {worst_loss:.2e} (bound {bf16_bound(loss):.2e})")
    assert worst_adapter <= bf16_bound(adapter_spread)
    assert worst_loss <= bf16_bound(loss)


def test_a_pack_trains_under_bf16_autocast_on_the_gpu(tmp_path, monkeypatch):
    """As a run alone does (its Trainer's bf16, which accelerate puts around its forward): the pack
    calls its model itself, under the same autocast."""
    import lorasweep.run.pack as pack_module

    seen, losses_of = [], pack_module.classification_losses

    def recorded(*args):
        seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
        return losses_of(*args)

    monkeypatch.setattr(pack_module, "classification_losses", recorded)
    cfgs = [compose_config(["model=tiny-bert", *STEPS, "train.max_steps=3", *run, f"results_dir={tmp_path}"])
            for run in RUNS["tiny-bert"][:2]]
    results = run_pack(cfgs)
    assert [r["status"] for r in results] == ["done", "done"]
    assert all(r["env"]["device"] == torch.cuda.get_device_name(0) for r in results)
    assert seen == [(True, torch.bfloat16)] * 3


# test_pack's 4 tiny-bert runs on a wider bert, 64 glosses a step each: a pack's rows dominate its memory
WIDE = ["model.tiny.hidden_size=512", "model.tiny.intermediate_size=2048", "train.batch_size=64",
        "task.max_train=128", "train.max_steps=3", "train.eval_steps=3", "train.eval_batch_size=16"]


def _wide(runs, results) -> list[dict]:
    return [compose_config(setting(["model=tiny-bert", *STEPS, "lora.dropout=0", *run], *WIDE)
                           + [f"results_dir={results}"]) for run in runs]


def test_a_pack_too_big_for_the_gpu_trains_again_in_halves(tmp_path, capsys):
    """A real out-of-memory error in a pack of 4 (the GPU filled to hold its halves' steps, not its
    own) trains the 4 again as two packs of 2, each run done; measured unfilled first."""
    four = RUNS["tiny-bert"]
    halves = max(peak_of(lambda h=h, i=i: run_pack(_wide(h, tmp_path / f"measure-{i}")))[1]
                 for i, h in enumerate((four[:2], four[2:])))
    _, _, whole = peak_of(lambda: run_pack(_wide(four, tmp_path / "measure-4")))
    capsys.readouterr()
    with device_left_with(room_between(halves, whole, "a pack of 2 and a pack of 4")):
        results = run_pack(_wide(four, tmp_path / "results"))
    assert [r["status"] for r in results] == ["done"] * 4
    assert [r["pack"]["size"] for r in results] == [2, 2, 2, 2]
    said = capsys.readouterr().err
    assert f"out of accelerator memory on cuda:0 ({torch.cuda.get_device_name(0)}, " in said
    assert "with 4 runs; 4 train again, 2 in a pack and 2 in a pack" in said
    print(f"pack of 2: {halves / MIB:.0f} MiB reserved at most; pack of 4: {whole / MIB:.0f} MiB allocated")
