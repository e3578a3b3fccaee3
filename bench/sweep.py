"""Benchmark 2: the 9-run design-card grid through lorasweep against 9 bare scripts, one after another.

    python bench/sweep.py [--max-train 1600] [--epochs 1] [--n-jobs 2]

Grid: lora.r=4,8,16 x lora.proj=qk,qkvo,qkvoud on MiniLM (model=minilm, the embedded default before
smollm2-4l; a BERT: it has no MLP gate, so the card's `qvkogdu` becomes `qkvoud`, every projection it has). The bare scripts are
written as the tutorials write them: each a fresh process that imports, loads and tokenizes again,
pads every example to max_length, and evaluates in training-sized batches. lorasweep pays once for
what runs share (a worker process kept across runs), pads each batch to its longest row, evaluates
in batches of 64, and runs `--n-jobs` runs at once with the cores split between them.
Same data, steps, batch, lr and seed on both sides. Target: lorasweep at least 2x faster end to end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _proc import PYTHON, measure, results_in, row

RANKS = (4, 8, 16)
# peft target regexes of BERT's modules, per projection code (lorasweep derives these from the code)
PROJ = {"qk": r".*\.(query|key)$",
        "qkvo": r".*\.(query|key|value|attention\.output\.dense)$",
        "qkvoud": r".*\.(query|key|value|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)$"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-train", type=int, default=1600, help="training rows per run (0 = all 4000)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--n-jobs", type=int, default=2, help="lorasweep runs in flight at once")
    args = ap.parse_args()
    common = ["model=minilm", f"task.max_train={args.max_train}", f"train.epochs={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = measure([PYTHON, "launch.py", "-m", "lora.r=" + ",".join(map(str, RANKS)),
                         "lora.proj=" + ",".join(PROJ), *common, f"results_dir={tmp / 'results'}",
                         f"hydra.launcher.n_jobs={args.n_jobs}"], tmp / "sweep.log")
        ours = [r["metrics"]["test"]["accuracy"] for r in results_in(tmp / "results")]
        bare_walls, bare_accs = [], []
        start = time.perf_counter()
        for r in RANKS:
            for code, regex in PROJ.items():
                out = tmp / f"bare-{code}-r{r}.json"
                m = measure([PYTHON, "bench/bare_run.py", "--out", str(out), "--r", str(r), "--targets", regex,
                             "--padding", "max_length", "--eval-batch-size", "16",
                             "--max-train", str(args.max_train), "--epochs", str(args.epochs)], tmp / "bare.log")
                bare_walls.append(m.wall_s)
                bare_accs.append(json.loads(out.read_text())["test_accuracy"])
        bare_total = time.perf_counter() - start
    print(f"9-run grid r={RANKS} x proj={tuple(PROJ)} on MiniLM (model=minilm), "
          f"{args.max_train or 4000} training rows x {args.epochs} epoch(s) per run")
    print(row("", "total s", "per run s", "runs", "mean test acc"))
    print(row(f"lorasweep (-m, n_jobs={args.n_jobs})", f"{sweep.wall_s:.0f}", f"{sweep.wall_s / 9:.1f}",
              str(len(ours)), f"{statistics.mean(ours):.3f}"))
    print(row("9 bare scripts, one after another", f"{bare_total:.0f}", f"{statistics.mean(bare_walls):.1f}",
              str(len(bare_accs)), f"{statistics.mean(bare_accs):.3f}"))
    print(f"speed-up: {bare_total / sweep.wall_s:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
