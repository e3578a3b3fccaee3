"""How far bf16 autocast moves a run from float32: the spreads the GPU tier's bounds come from
(tests/gpu_tier.py says how a bound is derived from a spread).

    python bench/bf16_spread.py [--parts golden,pack] [--first N] [--json spread.json]

Each run trains twice on this machine's device, with the Trainer's bf16 autocast and without it
(tests/gpu_tier.precision: forced either way; a CPU runs accelerate's CPU autocast, a GPU its CUDA
one), and the two are compared:
  golden  each golden run (tests/test_golden.RUNS): its pinned values' largest loss move (relative)
          and most accuracy flips (examples of n), as the GPU tier's golden check counts them
  pack    each run of the GPU tier's pack cases (tests/gpu_tier.PACK_CASES) alone: its saved adapter's
          largest difference (relative to each tensor's largest value) and its losses' (relative)
Printed as a table, the largest of each last; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src"), str(ROOT)]

import conftest  # noqa: E402,F401  (offline hub, the tests' hooks: the runs as the tests run them)
import gpu_tier  # noqa: E402


def golden(tmp: Path, first: int | None) -> Iterator[tuple[str, dict[str, float]]]:
    from test_golden import RUNS, pinned

    from conftest import compose_config
    from lorasweep.run.lifecycle import run_config

    for name, overrides in list(RUNS.items())[:first]:
        got = {}
        for bf16 in (False, True):
            with gpu_tier.precision(bf16):
                got[bf16] = pinned(run_config(compose_config([*overrides, f"results_dir={tmp / name / str(bf16)}"])))
        yield f"golden {name}", gpu_tier.golden_spread(got[True], got[False])


def pack(tmp: Path, first: int | None) -> Iterator[tuple[str, dict[str, float]]]:
    from test_pack import _largest_difference

    from lorasweep.run.lifecycle import run_config

    for case in gpu_tier.PACK_CASES[:first]:
        results = {}
        for bf16 in (False, True):
            store = tmp / case / str(bf16)
            with gpu_tier.precision(bf16):
                results[bf16] = [(run_config(cfg), store) for cfg in gpu_tier.pack_configs(case, store)]
        for i, ((a, sa), (b, sb)) in enumerate(zip(results[False], results[True])):
            yield f"pack {case} run {i}", {"adapter": _largest_difference(gpu_tier.folder(a, sa), gpu_tier.folder(b, sb)),
                                           "loss": gpu_tier.loss_spread(a, b)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="golden,pack")
    ap.add_argument("--first", type=int, default=None, help="only the first N golden runs and pack cases (a smoke test)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            for name, spread in {"golden": golden, "pack": pack}[part](Path(tmp), args.first):
                rows.append((name, spread))  # said as it comes (the runs' own output is between)
                print(f"spread {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in spread.items()), flush=True)
    print(f"bf16 autocast against float32, on {device} (torch {torch.__version__})")
    print(f"{'run':36}{'loss':>12}{'flips':>12}{'adapter':>12}")
    for name, spread in rows:
        print(f"{name:36}" + "".join(f"{spread[k]:12.3g}" if k in spread else f"{'':12}"
                                      for k in ("loss", "flips", "adapter")))
    for prefix in ("golden", "pack"):
        if mine := [s for n, s in rows if n.startswith(prefix)]:
            print(f"largest, {prefix}: " + ", ".join(f"{k} {max(s[k] for s in mine):.3g}" for k in mine[0]))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "rows": [{"run": n, **s} for n, s in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
