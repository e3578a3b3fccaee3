"""The GPU tier's shared parts (`pytest -m gpu`; tests/test_gpu_*.py): why it skips, the runs it
compares, and the bf16-aware bounds it compares them within. bench/bf16_spread.py measures the
spreads the bounds are derived from, with the same runs.

The bound of a comparison between two bf16 computations (a pack and its runs alone on a GPU; a golden
run on CUDA and its CPU float32 value) is derived from how far bf16 autocast moves the same run from
float32 (its spread, measured by bench/bf16_spread.py): each of the two lies within about one spread
of the float32 run, so they lie within two of each other; BF16_FACTOR = 3 leaves half as much again
for the GPU's own kernels (other GEMM tilings and summation orders than the CPU's), until the GPU's
own spread is measured (bench/gpu_check.sh runs bench/bf16_spread.py there; its spread.json, kept in
bench/results/ as <date>-<device>-bf16-spread.json, joins the measurements the bounds take the
largest of: `spreads`).
"""
from __future__ import annotations

import contextlib
import gc
import math
from pathlib import Path
from typing import Iterator, Sequence

BF16_FACTOR = 3.0
MIB = 2**20
SPREAD_FILES = "bench/results/*-bf16-spread.json"  # bench/bf16_spread.py --json, kept: each device's spreads


def why_no_cuda() -> str | None:
    """Why the GPU tier cannot run here (the skip's reason), or None where torch sees a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"needs CUDA: this torch ({torch.__version__}) is a CPU build"
    return (f"needs CUDA: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
            f"(torch.cuda.is_available() is False)")


def spreads(prefix: str, root: Path | None = None) -> dict[str, float]:
    """The largest spread of each kind ("loss", "flips", "adapter") over the rows of every kept
    measurement (SPREAD_FILES) whose run starts with `prefix` ("golden", "pack classification"): a
    device that moves the runs further (a GPU's, once kept) widens the bounds derived from them."""
    import json

    root = root or Path(__file__).resolve().parents[1]
    out: dict[str, float] = {}
    for path in sorted(root.glob(SPREAD_FILES)):
        for row in json.loads(path.read_text())["rows"]:
            if row["run"].startswith(prefix):
                for kind, value in row.items():
                    if kind != "run":
                        out[kind] = max(out.get(kind, 0.0), value)
    if not out:
        raise LookupError(f"no measured bf16 spread of {prefix!r} runs in {root / SPREAD_FILES}: run bench/bf16_spread.py")
    return out


def bf16_bound(spread: float) -> float:
    """The bound of two bf16 computations of one run, from the run's measured bf16-vs-float32 spread."""
    if not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"a bf16 spread is a finite number >= 0, not {spread!r}")
    return BF16_FACTOR * spread


@contextlib.contextmanager
def precision(bf16: bool) -> Iterator[None]:
    """Runs trained inside train with bf16 autocast or without it, whatever the device: the Trainer's
    own choice is bf16 on a GPU and never on a CPU (run/loop.trainer_arguments); accelerate's
    autocast works on both."""
    import lorasweep.run.loop as loop

    plain = loop.trainer_arguments
    loop.trainer_arguments = lambda *a, **k: {**plain(*a, **k), "bf16": bf16}
    try:
        yield
    finally:
        loop.trainer_arguments = plain


# --- the runs a pack is compared on: test_pack's, classification and SFT ---------------------------

PACK_CASES = ("classification", "sft")


def pack_configs(case: str, results: Path, extra: Sequence[str] = ()) -> list[dict]:
    """The configs of the runs of one pack-equivalence case, their results into `results`: test_pack's
    tiny-bert classification runs (17 steps; mixed ranks, projections, methods) or its tiny-qwen3 SFT
    runs (mcq, 12 steps); `extra`: overrides for every run."""
    from conftest import compose_config
    from test_pack import NO_DROPOUT, RUNS, SFT, SFT_STEPS, STEPS

    if case == "classification":
        model, common = "tiny-bert", [*STEPS, "train.max_steps=17"]
    elif case == "sft":
        model, common = "tiny-qwen3", [SFT["tiny-qwen3"], *SFT_STEPS]
    else:
        raise ValueError(f"case={case!r}: one of {', '.join(PACK_CASES)}")
    return [compose_config([f"model={model}", *common, "lora.dropout=0", *NO_DROPOUT[model], *run, *extra,
                            f"results_dir={results}"]) for run in RUNS[model]]


def folder(result: dict, results: Path) -> Path:
    return results / f"{result['slug']}-{result['run_key']}"


def losses(result: dict) -> dict[str, float]:
    """A result's losses by where they are: the mean training loss, the test loss, and the curve's."""
    out = {"train": result["metrics"]["train"]["loss"], "test": result["metrics"]["test"]["loss"]}
    for point in result["curve"]:
        for key in ("loss", "train_loss"):
            if point.get(key) is not None:
                out[f"curve[{point['step']}].{key}"] = point[key]
    return out


def loss_spread(a: dict, b: dict) -> float:
    """The largest relative difference between two results' losses (the same places in each)."""
    la, lb = losses(a), losses(b)
    if la.keys() != lb.keys():
        raise AssertionError(f"the results have losses at other places: {sorted(la.keys() ^ lb.keys())}")
    return max(abs(la[k] - lb[k]) / max(abs(la[k]), 1e-12) for k in la)


# --- the golden runs' values, compared within a tolerance --------------------------------------------

# accuracy-like fractions, each a count over the n beside it; an SE (sqrt(p(1-p)/n)) moves by at most
# sqrt(k)/n <= k/n when its fraction moves by k/n, so it takes its fraction's slack
FRACTIONS = {"accuracy": "n", "exact_match": "n", "token_accuracy": "n_tokens"}


def _measure(key: str, got: float, want: float, leaves: dict) -> tuple[str, float] | None:
    """How far a float leaf of a golden run moved, in its own unit: ("flips", examples of its n) for an
    accuracy-like fraction or its SE, ("loss", relative to the loss) for a loss or a loss's SE (relative
    to the loss beside it); None for any other leaf (compared exactly)."""
    path, leaf = key.rsplit(".", 1) if "." in key else ("", key)
    base = leaf.removesuffix("_se")
    if base in FRACTIONS:
        n = leaves.get(f"{path}.{FRACTIONS[base]}" if path else FRACTIONS[base])
        return ("flips", abs(got - want) * n) if isinstance(n, int) and n > 0 else None
    if base.endswith("loss"):
        scale = leaves.get(key.removesuffix("_se")) if leaf.endswith("_se") else want
        return "loss", abs(got - want) / max(abs(scale or 0.0), 1e-12)
    return None


def golden_spread(got: dict, want: dict) -> dict[str, float]:
    """How far one golden run's pinned values moved from `want`: the largest loss move (relative) and
    the most accuracy flips (examples), as golden_differences counts them."""
    from test_golden import flatten

    g, w = flatten(got), flatten(want)
    spread = {"loss": 0.0, "flips": 0.0}
    for k in w.keys() & g.keys():
        if isinstance(w[k], float) and isinstance(g[k], (int, float)) and (m := _measure(k, g[k], w[k], w)):
            spread[m[0]] = max(spread[m[0]], m[1])
    return spread


def golden_differences(got: dict, want: dict, loss_rel: float, flips: int) -> list[str]:
    """Every pinned value of a golden run that differs beyond its tolerance: a loss (and its SE) within
    `loss_rel` of the loss, an accuracy-like fraction (and its SE) within `flips` examples of its n,
    anything else (steps, epochs, n, trainable parameters) exactly."""
    from test_golden import flatten

    g, w = flatten(got), flatten(want)
    out = [f"{k}: missing (expected {w[k]!r})" for k in w if k not in g]
    out += [f"{k}: unexpected {g[k]!r}" for k in g if k not in w]
    allowed = {"loss": loss_rel, "flips": flips + 1e-6}
    for k in sorted(w.keys() & g.keys()):
        a, e = g[k], w[k]
        if isinstance(e, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
            measured = _measure(k, a, e, w)
            if measured is not None:
                if not measured[1] <= allowed[measured[0]]:  # NaN fails too
                    out.append(f"{k}: {a!r}, expected {e!r}: {measured[1]:.3g} {measured[0]} "
                               f"(allowed {allowed[measured[0]]:.3g})")
                continue
        if type(a) is not type(e) or a != e:
            out.append(f"{k}: {a!r}, expected {e!r}")
    return out


# --- configs and a GPU's memory ------------------------------------------------------------------------

def setting(overrides: list[str], *changes: str) -> list[str]:
    """`overrides` with each `key=value` of `changes` in place of that key's own (Hydra refuses a key twice)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(changes)


def settle() -> None:
    """Nothing unreferenced left on the GPU: cycles collected, the allocator's cache emptied."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def peak_of(fn) -> tuple[object, int, int]:
    """fn()'s value, and its peak GPU memory in bytes: reserved (what it took from the device) and
    allocated (what its tensors needed at most), both counting what this process already holds."""
    import torch

    settle()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    peaks = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
    settle()
    return out, *peaks


@contextlib.contextmanager
def device_left_with(room: int):
    """The GPU filled (one tensor of this process) until `room` bytes more fit than this process
    holds now: an allocation past that fails in CUDA itself, as on a full card."""
    import torch

    settle()
    free, _ = torch.cuda.mem_get_info()
    held = torch.cuda.memory_reserved()
    filler = torch.empty(max(0, free - (room - held)), dtype=torch.uint8, device="cuda")
    try:
        yield
    finally:
        del filler
        settle()


def room_between(fits: int, must_not: int, what: str) -> int:
    """The memory to leave (device_left_with) for work whose peak reserved memory is `fits` to fit and
    work whose peak allocated memory is `must_not` not to (allocated: the allocator frees its cache
    and tries again before it gives up), midway, at least 128 MiB from either (for what CUDA takes
    outside the allocator, such as a kernel's code loaded the first time it runs)."""
    assert must_not - fits >= 256 * MIB, (f"{what}: the sizes do not separate ({fits / MIB:.0f} MiB fits, "
                                          f"{must_not / MIB:.0f} MiB must not): make the large one larger")
    return (fits + must_not) // 2
