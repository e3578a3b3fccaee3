"""hydra.launcher.pack=auto: a group of compatible runs (sweep/packs) trains packed only where the
plan predicts that it pays, in as many packs as predicted fastest.

A pack loads its model once, sets up each run as alone (its data, its Trainer, its saving) and does
their summed work at a rate of its own (run/predict.pack_cost: a little slower than alone on a CPU,
faster on a GPU that one small run leaves idle). On a CPU, whose workers keep a model loaded from run
to run, that leaves a pack little to save: 30-step runs of the embedded default trained 1.04x faster
packed on one worker and 0.83x on two (bench/RESULTS.md section 19), and auto trains them alone.

From each run's predicted cost (run/predict.py, calibrated on the store's finished runs on this
machine, or cold), the group's wall time on the launcher's slots (n_jobs, or a SLURM array's
parallel jobs) is predicted alone and in every split of 1 to n/2 balanced packs. The group packs
where the fastest split that fits in memory (the GPU's; on a CPU the machine's memory over its
slots) is predicted at least MIN_GAIN faster than alone: a prediction off by its error band must not
make a sweep slower than not packing. Each group's choice is one line, in the sweep and in the plan
view.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .packs import balanced
from .predicted import Where, wall_seconds

if TYPE_CHECKING:  # run/predict imports torch: a sweep checks its configs before that loads
    from ..run.cost import Cost

MIN_GAIN = 1.10  # packs must be predicted this much faster: a calibrated prediction is good to ~10-15%
HOST_SHARE = 0.8  # of a CPU machine's memory, the part its slots' processes may hold together


@dataclass(frozen=True)
class Choice:
    """How a group trains: in `packs` packs (its length: each run alone), and the predictions why."""

    packs: int
    alone_s: float | None            # the group's predicted wall time, each run alone
    packed_s: float | None = None    # ... in the fastest split that fits (None: none fits, or none predicted)
    split: int | None = None         # that split's number of packs
    reason: str = ""                 # why alone where no prediction decided it

    @property
    def gain(self) -> float | None:
        return self.alone_s / self.packed_s if self.alone_s and self.packed_s else None


def choose(costs: Sequence[Cost | None], slots: int, memory_mb: float | None) -> Choice:
    """The split of a group of runs (their predicted costs alone, in order) that is predicted fastest
    on `slots` units at a time, each unit within `memory_mb` (None: not known), packed only where
    that is at least MIN_GAIN faster than each run alone."""
    from ..run.predict import pack_cost

    n = len(costs)
    if any(c is None for c in costs):
        return Choice(n, None, reason="a run's cost cannot be predicted here")
    alone_s = wall_seconds([c.total_s for c in costs], slots)
    best: tuple[float, int] | None = None
    for k in range(1, n // 2 + 1):  # k packs of at least 2 runs each
        packs = [pack_cost(part) for part in balanced(costs, k)]
        if memory_mb is not None and max(p.peak_mb for p in packs) > memory_mb:
            continue
        wall = wall_seconds([p.total_s for p in packs], slots)
        if best is None or wall < best[0]:
            best = (wall, k)
    if best is None:
        return Choice(n, alone_s, reason=f"no pack of 2 or more fits {memory_mb:,.0f} MiB")
    packed_s, k = best
    return Choice(k if alone_s >= MIN_GAIN * packed_s else n, alone_s, packed_s, k)


def line(choice: Choice, cfg: Mapping[str, Any], n: int) -> str:
    """"pack=auto: 9 runs of smollm2-4l on wordnet_topics (250 steps): 2 packs, predicted 1.62x
    faster than alone (6m10s against 10m00s)", or why they train alone."""
    train = cfg.get("train") or {}
    epochs = train.get("epochs")
    steps = (f"{train.get('max_steps')} steps" if (train.get("max_steps") or 0) > 0
             else f"{epochs} epoch{'s' if epochs != 1 else ''}")
    what = f"pack=auto: {n} runs of {(cfg.get('model') or {}).get('name')} on {(cfg.get('task') or {}).get('name')} ({steps})"
    if choice.gain is None:
        return f"{what}: alone ({choice.reason})"
    from .status import duration

    times = (f"predicted {duration(choice.packed_s)} in {choice.split} pack{'s' if choice.split != 1 else ''} "
             f"against {duration(choice.alone_s)} alone: {choice.gain:.2f}x")
    if choice.packs == n:
        return f"{what}: alone ({times}; packs pay from {MIN_GAIN:.2f}x)"
    return f"{what}: {choice.packs} pack{'s' if choice.packs != 1 else ''} ({times})"


class AutoSplit:
    """make_packs' `split` for pack=auto: each group's choice, its line kept in `lines` to be said."""

    def __init__(self, cost_of: Callable[[Any], Cost | None], cfg_of: Callable[[Any], Mapping[str, Any]],
                 where: Where) -> None:
        self.cost_of, self.cfg_of, self.where = cost_of, cfg_of, where
        self.lines: list[str] = []
        self.kept_alone: list = []  # the runs of groups it chose to train alone

    def __call__(self, group: list) -> int:
        choice = choose([self.cost_of(item) for item in group], self.where.n_jobs, unit_memory_mb(self.where))
        self.lines.append(line(choice, self.cfg_of(group[0]), len(group)))
        if choice.packs == len(group):
            self.kept_alone += group
        return choice.packs


def unit_memory_mb(where: Where) -> float | None:
    """The memory one unit (a run or a pack) may use: its GPU's; on a CPU, this machine's share for
    each of its slots (a SLURM job's node is not known: None)."""
    if where.device != "cpu":
        return where.gpu_mb
    if where.machine is None:
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        return None
    return HOST_SHARE * total / max(1, where.n_jobs)
