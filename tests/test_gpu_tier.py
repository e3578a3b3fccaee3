"""The GPU tier's own logic, on the CPU: the tier skips with its reason where no CUDA is, its bounds
follow from the measured spreads, its golden comparison counts losses and flips as it says, and a
pack's layers take the product path forced on them."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from gpu_tier import BF16_FACTOR, bf16_bound, golden_differences, golden_spread, spreads, why_no_cuda

GPU_FILES = ["tests/test_gpu_runs.py", "tests/test_gpu_pack.py", "tests/test_gpu_golden.py"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the tier runs here")
def test_without_cuda_the_gpu_tier_is_skipped_saying_why():
    reason = why_no_cuda()
    if torch.version.cuda is None:
        assert reason == f"needs CUDA: this torch ({torch.__version__}) is a CPU build"
    else:
        assert reason.startswith(f"needs CUDA: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    # `pytest -m gpu`: every test of the tier collected and skipped with that reason; this file's deselected
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                           *GPU_FILES, "tests/test_gpu_tier.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) skipped, (\d+) deselected in [\d.]+s", summary)
    assert match and int(match[1]) >= 10 and int(match[2]) >= len(_own_tests()), proc.stdout[-3000:]
    skipped = re.findall(r"^SKIPPED \[(\d+)\] tests/test_gpu_\w+\.py(?::\d+)?: (.*)$", proc.stdout, re.M)
    assert sum(int(n) for n, _ in skipped) == int(match[1]) and {why for _, why in skipped} == {reason}, proc.stdout


def _own_tests() -> list[str]:
    return [name for name in globals() if name.startswith("test_")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the tier's reason is tested without it above")
def test_with_cuda_the_gpu_tier_runs():
    assert why_no_cuda() is None


def test_a_bf16_bound_is_the_factor_times_the_spread():
    assert BF16_FACTOR == 3.0  # two bf16 runs within one spread of float32 each, and half again for the GPU
    assert bf16_bound(2e-3) == pytest.approx(6e-3)
    assert bf16_bound(0.0) == 0.0
    for bad in (float("nan"), float("inf"), -1e-3):
        with pytest.raises(ValueError, match="a bf16 spread is a finite number >= 0"):
            bf16_bound(bad)


def test_the_bounds_take_the_largest_spread_of_every_kept_measurement(tmp_path):
    """The CPU's measurement, kept in bench/results, gives the tier's bounds; a GPU's, kept beside it,
    widens those it moves further and leaves the others."""
    import json

    assert spreads("golden") == {"loss": pytest.approx(6.28e-5, rel=1e-2), "flips": 0.0}
    assert spreads("pack sft") == {"adapter": pytest.approx(0.386, rel=1e-2), "loss": pytest.approx(8.04e-5, rel=1e-2)}
    (tmp_path / "bench" / "results").mkdir(parents=True)
    for name, rows in {"cpu": [("golden a", {"loss": 1e-4, "flips": 0.0}), ("golden b", {"loss": 3e-4, "flips": 0.0}),
                               ("pack sft run 0", {"adapter": 0.3, "loss": 1e-4})],
                       "gpu": [("golden a", {"loss": 2e-4, "flips": 1.0}), ("pack sft run 0", {"adapter": 0.2, "loss": 2e-4})]
                       }.items():
        (tmp_path / "bench" / "results" / f"2026-12-0{len(name)}-{name}-bf16-spread.json").write_text(
            json.dumps({"device": name, "rows": [{"run": run, **spread} for run, spread in rows]}))
    assert spreads("golden", tmp_path) == {"loss": 3e-4, "flips": 1.0}
    assert spreads("pack sft", tmp_path) == {"adapter": 0.3, "loss": 2e-4}
    with pytest.raises(LookupError, match="no measured bf16 spread of 'pack dpo' runs in .*: run bench/bf16_spread.py"):
        spreads("pack dpo", tmp_path)


WANT = {"overrides": ["model=tiny-bert"], "params.trainable": 9882, "metrics.train.loss": 3.2,
        "metrics.test": {"accuracy": 0.125, "accuracy_se": 0.0827, "n": 16, "loss": 3.0},
        "curve": [{"step": 0, "epoch": 0.0, "train_loss": None, "loss": 3.3, "loss_se": 0.02, "token_accuracy": 0.5,
                   "token_accuracy_se": 0.1, "n": 8, "n_tokens": 24}]}


def changed(edit) -> dict:
    """A copy of WANT that `edit` (a function of it) has changed."""
    import copy

    out = copy.deepcopy(WANT)
    edit(out)
    return out


def keys(differences: list[str]) -> list[str]:
    return [d.split(": ")[0] for d in differences]


def test_golden_values_on_cuda_are_compared_in_losses_and_flips():
    assert golden_differences(WANT, WANT, 0.0, 0) == []
    # a loss within its relative tolerance, and its SE relative to the loss beside it (0.003 / 3.3)
    got = changed(lambda r: (r.update({"metrics.train.loss": 3.2 * 1.001}), r["curve"][0].update(loss_se=0.023)))
    assert golden_spread(got, WANT) == {"loss": pytest.approx(1e-3), "flips": 0.0}
    assert golden_differences(got, WANT, 1.1e-3, 0) == []
    differences = golden_differences(got, WANT, 0.9e-3, 0)
    assert keys(differences) == ["curve[0].loss_se", "metrics.train.loss"]
    assert differences[0] == "curve[0].loss_se: 0.023, expected 0.02: 0.000909 loss (allowed 0.0009)"
    # an accuracy counts in examples of its n (16), a token accuracy in tokens (n_tokens 24)
    got = changed(lambda r: (r["metrics.test"].update(accuracy=0.1875, accuracy_se=0.0976),
                             r["curve"][0].update(token_accuracy=0.5 + 2 / 24)))
    assert golden_spread(got, WANT)["flips"] == pytest.approx(2.0)
    assert golden_differences(got, WANT, 0.0, 2) == []
    assert keys(golden_differences(got, WANT, 0.0, 1)) == ["curve[0].token_accuracy"]
    # anything else exactly: a count, an epoch, the trainable parameters; a missing value; NaN
    got = changed(lambda r: (r.update({"params.trainable": 9883}), r["metrics.test"].update(n=15),
                             r["curve"][0].update(epoch=0.5), r.pop("metrics.train.loss")))
    assert golden_differences(got, WANT, 1.0, 100) == [
        "metrics.train.loss: missing (expected 3.2)", "curve[0].epoch: 0.5, expected 0.0",
        "metrics.test.n: 15, expected 16", "params.trainable: 9883, expected 9882"]
    nan = changed(lambda r: r["metrics.test"].update(loss=float("nan")))
    assert keys(golden_differences(nan, WANT, 1.0, 0)) == ["metrics.test.loss"]
