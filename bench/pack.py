"""Benchmark: the design-card grid packed (hydra.launcher.pack) against its best unpacked sweep.

    python bench/pack.py [--max-steps 0] [--n-jobs 1,2] [--pack-n-jobs 1,2]

Grid: lora.r=4,8,16 x lora.proj=qk,qkvo,qvkogdu on the embedded default (model=smollm2-4l,
wordnet_topics, one epoch of 250 steps). Each side is a whole `python launch.py -m ...` into its own
results store, one after another in this invocation: unpacked with each --n-jobs (workers at once,
the cores split between them), packed with each --pack-n-jobs (pack=true: one pack per worker).
Printed: wall time, training examples per second (all runs' examples over the sweep's wall time),
the largest worker peak RSS (result.json memory.peak_rss_mb), and each cell's test accuracy on both
sides with the difference in units of their combined standard error. Target on 2 CPU cores: the
best packed sweep at least 1.3x faster than the best unpacked one.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from _proc import PYTHON, measure, results_in, row

GRID = ["lora.r=4,8,16", "lora.proj=qk,qkvo,qvkogdu"]


def sweep(tmp: Path, name: str, extra: list[str], common: list[str]) -> dict:
    slug = name.replace(" ", "-").replace("=", "")  # a Hydra override value: no spaces, no '='
    store = tmp / slug
    m = measure([PYTHON, "launch.py", "-m", *GRID, *common, *extra, f"results_dir={store}"], tmp / f"{slug}.log")
    results = results_in(store)
    examples = sum(r["timing"]["steps"] * r["config"]["train"]["batch_size"] for r in results)
    return {"name": name, "wall_s": m.wall_s, "examples_per_s": examples / m.wall_s,
            "peak_rss_mb": max(r["memory"]["peak_rss_mb"] or 0 for r in results),
            "acc": {(r["config"]["lora"]["r"], r["config"]["lora"]["proj"]): r["metrics"]["test"] for r in results}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=0, help="train.max_steps per run (0: the default's epoch)")
    ap.add_argument("--n-jobs", default="1,2", help="unpacked sweeps: workers at once, each value measured")
    ap.add_argument("--pack-n-jobs", default="1,2", help="packed sweeps: workers (one pack each), each value measured")
    args = ap.parse_args()
    common = [f"train.max_steps={args.max_steps}"] if args.max_steps else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        alone = [sweep(tmp, f"unpacked n_jobs={n}", [f"hydra.launcher.n_jobs={n}"], common)
                 for n in map(int, args.n_jobs.split(","))]
        packed = [sweep(tmp, f"packed n_jobs={n}", [f"hydra.launcher.n_jobs={n}", "hydra.launcher.pack=true"], common)
                  for n in map(int, args.pack_n_jobs.split(","))]
    steps = f"train.max_steps={args.max_steps}" if args.max_steps else "1 epoch (250 steps)"
    print(f"9-cell grid {' x '.join(GRID)} on model=smollm2-4l, wordnet_topics, {steps} a run")
    print(row("sweep", "wall s", "ex/s", "peak RSS MB", "vs best alone", widths=(24, 10, 10, 13, 15)))
    best_alone = min(alone, key=lambda s: s["wall_s"])
    for s in alone + packed:
        print(row(s["name"], f"{s['wall_s']:.0f}", f"{s['examples_per_s']:.1f}", f"{s['peak_rss_mb']:.0f}",
                  f"{best_alone['wall_s'] / s['wall_s']:.2f}x", widths=(24, 10, 10, 13, 15)))
    best_packed = min(packed, key=lambda s: s["wall_s"])
    print(f"speed-up, best packed ({best_packed['name']}) over best unpacked ({best_alone['name']}): "
          f"{best_alone['wall_s'] / best_packed['wall_s']:.2f}x (target >= 1.3x)")
    print("test accuracy per cell (n, SE), best unpacked vs best packed:")
    worst = 0.0
    for cell in sorted(best_alone["acc"]):
        a, p = best_alone["acc"][cell], best_packed["acc"][cell]
        z = abs(a["accuracy"] - p["accuracy"]) / max(1e-12, math.hypot(a["accuracy_se"], p["accuracy_se"]))
        worst = max(worst, z)
        print(f"  r={cell[0]:<3} {cell[1]:<8} {a['accuracy']:.3f} ± {a['accuracy_se']:.3f}   "
              f"{p['accuracy']:.3f} ± {p['accuracy_se']:.3f}   difference {z:.2f} combined SE")
    print(f"largest difference: {worst:.2f} combined SE (agree within their SE: {worst <= 1.0})")


if __name__ == "__main__":
    main()
