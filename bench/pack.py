"""Benchmark: the design-card grid unpacked, packed (hydra.launcher.pack=true) and pack=auto.

    python bench/pack.py                          # both grids, every way: ~100 min on 2 cores, alone
    python bench/pack.py --steps 30 --n-jobs 1    # one grid, one n_jobs: a check that it runs

Grid: lora.r=4,8,16 x lora.proj=qk,qkvo,qvkogdu on the embedded default (model=smollm2-4l,
wordnet_topics), once per --steps value (0: the default's epoch of 250 steps a run; 30: a short-run
grid, whose fixed costs dominate). Each way is a whole `python launch.py -m ...` into its own fresh
results store (so pack=auto predicts cold, as on a first sweep), one after another in this
invocation: unpacked, pack=true (one pack per worker) and pack=auto, each at every --n-jobs.
Printed per grid: wall time, training examples per second (all runs' examples over the sweep's wall
time), the largest worker peak RSS (result.json memory.peak_rss_mb), the runs' summed training time
(timing.train_s; a packed run records its pack's: read it for sweeps that packed nothing. Where two
sweeps trained the same runs alone, unpacked and a pack=auto that packed nothing, its difference is
the machine's drift between them, not the way: `--ways pack=auto,pack=true,unpacked` runs the ways in
the other order), each way against the best unpacked one, what pack=auto chose (its line), and each
cell's test accuracy of the best unpacked and best packed sweeps with the difference in units of
their combined standard error. Targets (issue 29, 2 CPU cores): pack=auto at least 0.97x of the best
way on the default grid, and at least 1.8x of the best unpacked sweep on the 30-step grid. Nothing is
asserted.
"""
from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path

from _proc import PYTHON, measure, results_in, row

GRID = ["lora.r=4,8,16", "lora.proj=qk,qkvo,qvkogdu"]
WAYS = {"unpacked": [], "pack=true": ["hydra.launcher.pack=true"], "pack=auto": ["hydra.launcher.pack=auto"]}
WIDTHS = (26, 8, 8, 13, 13, 17)


def sweep(tmp: Path, name: str, extra: list[str]) -> dict:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)  # a Hydra override value: no spaces, no '='
    store, log = tmp / slug, tmp / f"{slug}.log"
    m = measure([PYTHON, "launch.py", "-m", *GRID, *extra, f"results_dir={store}"], log)
    results = results_in(store)
    examples = sum(r["timing"]["steps"] * r["config"]["train"]["batch_size"] for r in results)
    return {"name": name, "wall_s": m.wall_s, "examples_per_s": examples / m.wall_s,
            "peak_rss_mb": max(r["memory"]["peak_rss_mb"] or 0 for r in results),
            "train_s": sum(r["timing"]["train_s"] for r in results),
            "auto": re.findall(r"^sweep: (pack=auto: .*)$", log.read_text(), re.M),
            "acc": {(r["config"]["lora"]["r"], r["config"]["lora"]["proj"]): r["metrics"]["test"] for r in results}}


def grid(tmp: Path, steps: int, n_jobs: list[int], ways: list[str]) -> None:
    common = [f"train.max_steps={steps}"] if steps else []
    title = f"{steps} steps a run" if steps else "the default's epoch (250 steps a run)"
    done = {way: [sweep(tmp, f"{way} n_jobs={n} {steps or 'default'}", [f"hydra.launcher.n_jobs={n}", *WAYS[way], *common])
                  for n in n_jobs] for way in ways}
    print(f"\n9-cell grid {' x '.join(GRID)} on model=smollm2-4l, wordnet_topics, {title}")
    print(row("sweep", "wall s", "ex/s", "peak RSS MB", "train s, sum", "vs best unpacked", widths=WIDTHS))
    every = [s for way in ways for s in done[way]]
    best = {way: min(done[way], key=lambda s: s["wall_s"]) for way in ways}
    base = best.get("unpacked", best[ways[0]])
    for s in every:
        print(row(s["name"], f"{s['wall_s']:.0f}", f"{s['examples_per_s']:.1f}", f"{s['peak_rss_mb']:.0f}",
                  f"{s['train_s']:.0f}", f"{base['wall_s'] / s['wall_s']:.2f}x", widths=WIDTHS))
        for line in s["auto"]:
            print(f"    {line}")
    fastest = min(every, key=lambda s: s["wall_s"])
    if "pack=auto" in best:
        auto = best["pack=auto"]
        print(f"pack=auto ({auto['name']}) against the fastest way ({fastest['name']}): "
              f"{fastest['wall_s'] / auto['wall_s']:.2f}x (target on the default grid >= 0.97x); against the best "
              f"unpacked ({base['name']}): {base['wall_s'] / auto['wall_s']:.2f}x (target on 30 steps >= 1.8x)")
    if "unpacked" in best and "pack=true" in best:
        accuracy(best["unpacked"], best["pack=true"])


def accuracy(alone: dict, packed: dict) -> None:
    print(f"test accuracy per cell (n, SE), {alone['name']} vs {packed['name']}:")
    worst = 0.0
    for cell in sorted(alone["acc"]):
        a, p = alone["acc"][cell], packed["acc"][cell]
        z = abs(a["accuracy"] - p["accuracy"]) / max(1e-12, math.hypot(a["accuracy_se"], p["accuracy_se"]))
        worst = max(worst, z)
        print(f"  r={cell[0]:<3} {cell[1]:<8} {a['accuracy']:.3f} ± {a['accuracy_se']:.3f}   "
              f"{p['accuracy']:.3f} ± {p['accuracy_se']:.3f}   difference {z:.2f} combined SE")
    print(f"largest difference: {worst:.2f} combined SE (agree within their SE: {worst <= 1.0})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="0,30", help="train.max_steps of each grid (0: the default's epoch)")
    ap.add_argument("--n-jobs", default="1,2", help="workers at once, each value measured for each way")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"of {', '.join(WAYS)}")
    args = ap.parse_args()
    ways = args.ways.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for steps in map(int, args.steps.split(",")):
            grid(Path(tmp), steps, [int(n) for n in args.n_jobs.split(",")], ways)


if __name__ == "__main__":
    main()
