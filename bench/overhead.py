"""Benchmark 1: one run of MiniLM (model=minilm, the embedded default before smollm2-4l) through
`python launch.py` against a bare script.

    python bench/overhead.py [--repeat 1]

The bare script (bench/bare_run.py, transformers + peft by hand) trains the same model on the same
data with the same steps, batch, learning rate, seed, dynamic padding and evaluation batch, so the
ratio is what lorasweep adds: Hydra, planning and counting, the step-0 evaluation of the curve, the
result file. Both run as whole processes, alternately. Target: lorasweep's wall time <= 1.05x.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _proc import PYTHON, measure, results_in, row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"lorasweep (launch.py)": [], "bare script": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(args.repeat):
            store = tmp / f"results{i}"
            m = measure([PYTHON, "launch.py", "model=minilm", f"results_dir={store}"], tmp / f"lorasweep{i}.log")
            (result,) = results_in(store)
            t = result["timing"]
            runs["lorasweep (launch.py)"].append({"wall": m.wall_s, "rss": m.peak_rss_mb, "train": t["train_s"],
                                                  "ex_s": t["train_examples_per_s"],
                                                  "acc": result["metrics"]["test"]["accuracy"]})
            out = tmp / f"bare{i}.json"
            m = measure([PYTHON, "bench/bare_run.py", "--out", str(out)], tmp / f"bare{i}.log")
            bare = json.loads(out.read_text())
            runs["bare script"].append({"wall": m.wall_s, "rss": m.peak_rss_mb, "train": bare["train_s"],
                                        "ex_s": bare["train_examples_per_s"], "acc": bare["test_accuracy"]})
    print(f"one run of MiniLM (model=minilm, LoRA r=8 qkvo, wordnet_topics, 500 steps), "
          f"{args.repeat} time(s) each, medians")
    print(row("", "wall s", "train s", "ex/s", "peak RSS MB", "test acc"))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for name, m in med.items():
        print(row(name, f"{m['wall']:.1f}", f"{m['train']:.1f}", f"{m['ex_s']:.1f}", f"{m['rss']:.0f}",
                  f"{m['acc']:.3f}"))
    ours, bare = med["lorasweep (launch.py)"], med["bare script"]
    print(f"ratio lorasweep / bare: wall {ours['wall'] / bare['wall']:.3f}x (target <= 1.05x), "
          f"train loop {ours['train'] / bare['train']:.3f}x, peak RSS {ours['rss'] / bare['rss']:.2f}x")


if __name__ == "__main__":
    main()
