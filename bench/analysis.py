"""Time analysis on a large synthetic results store: python bench/analysis.py [N] (default 10,000).

Writes N result JSONs (realistic size: config, params with module names, a 10-point curve) into a
temp folder, then prints the time to load them and to build every table. No assertions.
"""
from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: analysis/ is top level

from analysis import tables as T  # noqa: E402
from analysis.load import load_results  # noqa: E402
from analysis.report import build_tables  # noqa: E402


def synthetic(i: int, rng: random.Random) -> dict:
    r = rng.choice([1, 2, 4, 8, 16, 32, 64])
    proj = rng.choice(["q", "v", "qv", "qkvo", "qkvogud"])
    method = rng.choice(["lora", "dora"])
    seed = rng.randrange(5)
    acc = min(1.0, 0.4 + 0.04 * len(proj) + 0.01 * r ** 0.5 + rng.gauss(0, 0.02))
    trainable = 2 * r * 384 * len(proj) * 6
    status = rng.choices(["done", "failed", "pruned", "skipped_budget"], [90, 3, 5, 2])[0]
    return {
        "schema": 1, "run_key": f"{i:016x}", "slug": f"minilm-{method}-{proj}-r{r}", "status": status, "reason": "",
        "config": {"model": {"name": "minilm", "family": "bert"}, "method": method,
                   "task": {"name": rng.choice(["wordnet_topics", "wordnet_mcq"]), "kind": "classification"},
                   "train": {"lr": rng.choice([1e-4, 3e-4, 1e-3]), "seed": seed, "max_steps": 200},
                   "lora": {"r": r, "alpha": 2.0 * r, "dropout": 0.05, "proj": proj}},
        "budget": {"max_trainable": None, "r_auto": False},
        "params": {"trainable": trainable, "total": 22_700_000 + trainable, "trainable_pct": 1.0,
                   "predicted": trainable, "n_adapted_modules": 6 * len(proj),
                   "adapted_modules": [f"bert.encoder.layer.{k}.attention.self.query" for k in range(6 * len(proj))]},
        "metrics": {"test": {"accuracy": acc, "accuracy_se": 0.015, "n": 1000, "loss": 1.2}, "train": {"loss": 1.1}},
        "objective": {"name": "test.accuracy", "value": acc, "direction": "maximize"},
        "curve": [{"step": s * 20, "epoch": s / 10, "train_loss": 1.5, "accuracy": acc, "accuracy_se": 0.015,
                   "n": 1000, "loss": 1.2} for s in range(10)],
        "timing": {"load_s": 0.5, "train_s": 60.0, "eval_s": 3.0, "total_s": 64.0, "steps": 200},
        "memory": {"peak_rss_mb": 900.0, "peak_gpu_mb": None},
        "artifacts": {"kind": "adapter", "path": "adapter", "size_bytes": 4 * trainable},
        "env": {"python": "3.11.7", "torch": "2.13.0+cpu", "device": "cpu"},
    }


def main(n: int = 10_000) -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i in range(n):
            d = Path(tmp, f"run{i:05d}")
            d.mkdir()
            (d / "result.json").write_text(json.dumps(synthetic(i, rng), indent=2))
        t1 = time.perf_counter()
        df, rep = load_results([tmp])
        t2 = time.perf_counter()
        tabs = build_tables(df, 100_000, "accuracy")
        t3 = time.perf_counter()
    print(f"wrote {n} result JSONs in {t1 - t0:.2f} s")
    print(f"load: {t2 - t1:.2f} s ({rep.loaded} runs, {rep.n_skipped} skipped)")
    print(f"tables: {t3 - t2:.2f} s ({len(tabs['cells'][0])} cells, {int(tabs['cells'][0]['pareto'].sum())} "
          f"on the Pareto front, status {T.status_counts(df)})")
    print(f"load + tables: {t3 - t1:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
