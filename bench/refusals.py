"""How long a mistake in a value takes to be said: `python launch.py` with a bad value, against the
imports a refusal paid before run/preflight.py and config/checks.py (torch, transformers, peft,
the Trainer: `import lorasweep.run.lifecycle`), measured in the same invocation.

    python bench/refusals.py [--repeat 3]

Each command must exit 2 (a refused config) with its one line; nothing is trained or written. The
quantized method imports torch (to ask for CUDA), the rest none of the libraries.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _proc import PYTHON, ROOT, measure, row

LAUNCH = str(ROOT / "launch.py")
COMMANDS = {
    "libraries' import (the baseline)": ([PYTHON, "-c", "import lorasweep.run.lifecycle"], 0),
    "lora.r=-1": ([PYTHON, LAUNCH, "lora.r=-1"], 2),
    "train.compile=maybe": ([PYTHON, LAUNCH, "train.compile=maybe"], 2),
    "-m ... hydra.launcher.pack=1.5": ([PYTHON, LAUNCH, "-m", "lora.r=4,8", "hydra.launcher.pack=1.5"], 2),
    "-m optuna ... sampler=bogus": ([PYTHON, LAUNCH, "-m", "hydra/sweeper=optuna", "lora.r=choice(4,8)",
                                     "hydra.sweeper.sampler=bogus"], 2),
    "method=qlora (no GPU here)": ([PYTHON, LAUNCH, "model=tiny-qwen3", "task=wordnet_mcq", "method=qlora"], 2),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # alternately, so that a busy moment hits every command alike
            for name, (cmd, expect) in COMMANDS.items():
                cmd = cmd if "-m" not in cmd else [*cmd, f"hydra.sweep.dir={tmp}/multirun{i}"]
                walls[name].append(measure(cmd, Path(tmp) / "out.log", cwd=Path(tmp), expect=expect).wall_s)
    base = statistics.median(walls["libraries' import (the baseline)"])
    print(row("command", "median s", "vs import", widths=(40, 10, 10)))
    for name, w in walls.items():
        print(row(name, f"{statistics.median(w):.2f}", f"{statistics.median(w) / base:.2f}x", widths=(40, 10, 10)))


if __name__ == "__main__":
    main()
