"""The golden runs on CUDA (`pytest -m gpu`; skipped, with the reason, without CUDA: tests/gpu_tier.py).

tests/test_golden.py pins each golden run's values on the CPU in float32 (to 1e-6) and skips where
CUDA is: there the Trainer trains in bf16 autocast. Here the same runs (its RUNS, run by its own
fixture) train on the GPU and are held to the same pinned values within a bf16 tolerance:
gpu_tier.golden_differences, the losses (and their SEs) within LOSS_REL of each loss, an
accuracy-like value within FLIPS examples of its n, everything else (steps, epochs, n, trainable
parameters) exactly.

The tolerance is derived from bench/bf16_spread.py --parts golden (gpu_tier.bf16_bound of the
largest spread bf16 autocast moved these runs from float32), measured on this project's CPU; the GPU's
own spread is measured by the same script in bench/gpu_check.sh. A flip is a whole example: at least
one may flip (a tiny random model scores some examples within any rounding of a tie).
"""
from __future__ import annotations

import math

import pytest

from gpu_tier import bf16_bound, golden_differences, spreads
from test_golden import RUNS, golden_run, golden_values, pinned  # noqa: F401  (golden_run: its fixture)

pytestmark = pytest.mark.gpu

# gpu_tier.spreads: bench/bf16_spread.py's kept measurements (on the CPU 2026-12-05: losses 6.3e-5 at
# most, chat-lora's; classification-none, evaluated only and so never under the autocast, 0; no
# accuracy moved). The tolerance still allows one flip (above).
SPREAD = spreads("golden")
LOSS_REL = bf16_bound(SPREAD["loss"])
FLIPS = max(1, math.ceil(bf16_bound(SPREAD["flips"])))


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_run_on_cuda(name, golden_run):
    import torch

    result, _ = golden_run(name)
    assert result["status"] == "done"
    assert result["env"]["device"] == torch.cuda.get_device_name(0)
    got = {"overrides": RUNS[name], **pinned(result)}
    want = golden_values()["runs"][name]
    diffs = golden_differences(got, want, LOSS_REL, FLIPS)
    assert not diffs, (f"{name} on CUDA differs from its CPU golden values beyond the bf16 tolerance "
                       f"(losses {LOSS_REL:.1e} relative, {FLIPS} flips):\n" + "\n".join(diffs))
