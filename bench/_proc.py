"""What the benchmarks share: run a command as a whole process and measure it as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    returncode: int


def measure(cmd: list[str], log: Path, cwd: Path = ROOT, expect: int = 0) -> Measured:
    """Run `cmd` to completion (output to `log`); its wall time and its own peak RSS (not its children's).
    Another exit status than `expect` stops the benchmark."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != expect:
        sys.exit(f"{' '.join(cmd)} exited {code}, not {expect}; see {log}")
    return Measured(wall, usage.ru_maxrss / 1024, code)


def results_in(folder: Path) -> list[dict]:
    """Every result.json under a results store."""
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("result.json"))]


def row(*cells, widths=(34, 10, 10, 8, 14, 10)) -> str:
    return "".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))
