"""A planned run's predicted cost on a machine: its work (run/cost.py) from the plan's skeleton and
its task's token lengths, at that machine's rates (run/calibration.py). What the plan view shows,
what `timeout_min: auto` and `mem_gb: auto` ask SLURM for, and what a run records for the next
prediction's calibration (`cost` in result.json)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..config.spec import QUANTIZED_METHODS, ModelSpec, TaskSpec
from ..tasks.lengths import TaskLengths, task_lengths
from ..tasks.task import load_task
from . import calibration, cost, plan_cache
from .plan import Plan


@dataclass(frozen=True)
class Target:
    """Where the run will train: its device, the machine calibration matches (None: any machine of
    that device, for a SLURM job whose node is not known yet) and, on a CPU, its torch threads."""

    device: str = "cpu"
    machine: str | None = None
    threads: int = 1


def work(plan: Plan, device: str, tokenizer=None, lengths: TaskLengths | None = None) -> cost.Work:
    """The run's work; `tokenizer`: the run's own, where it has one loaded (else its model's is loaded:
    no weights); `lengths`: its task's, counted already (a pack's runs share them)."""
    lengths = lengths or task_lengths_of(plan, tokenizer)
    return cost.work(plan.spec, plan.shape, lengths, plan.predicted, plan.head, device)


def predict(plan: Plan, store: Path, target: Target = Target(), tokenizer=None) -> cost.Cost:
    """The run's cost at the rates its finished runs on `target`'s machine had (or cold ones)."""
    w = work(plan, target.device, tokenizer)
    r = calibration.rates(store, plan.spec.model.name, target.device, target.machine)
    threads = max(1, target.threads) if target.device == "cpu" else 1
    train_s = w.train_flops / (r.flops * threads)
    eval_s, test_s = (f / (r.eval_flops * threads) for f in (w.eval_flops, w.test_flops))
    return cost.Cost(train_s=train_s, eval_s=eval_s, test_s=test_s, load_s=r.load_s, peak_mb=r.runtime_mb + w.model_mb(),
                     device=target.device, basis=r.basis, time_error=r.time_error, memory_error=r.memory_error,
                     work=w, setup_s=r.setup_s)


# A pack's work (its runs' summed) at a rate of its own, relative to its runs alone: a CPU's step is
# compute-bound already, and a pack's larger activations fall out of the caches (0.94x on 2 cores,
# bench/RESULTS.md section 9); one small run leaves a GPU idle, which a pack fills (8 runs 1.75x on
# an H200 with the adapters looped, section 11).
PACKED_WORK = {"cpu": 1.06, "cuda": 1 / 1.75}


def pack_cost(costs: list[cost.Cost]) -> cost.Cost:
    """A pack's cost from its runs' alone: their work summed at the pack's rate (PACKED_WORK), the
    model loaded once, and each run set up as alone (its data, its Trainer, its adapter saved: a
    pack's setup took at least its runs' summed, bench/RESULTS.md section 19); its memory holds the
    base and the runtime once, and each run's adapters, optimizer and activations."""
    first = costs[0]
    others = sum(c.work.model_mb() - c.work.weights_mb for c in costs[1:])
    rate = PACKED_WORK.get(first.device, 1.0)
    return replace(first, train_s=rate * sum(c.train_s for c in costs), eval_s=rate * sum(c.eval_s for c in costs),
                   test_s=rate * sum(c.test_s for c in costs), load_s=max(c.load_s for c in costs),
                   setup_s=sum(c.setup_s for c in costs), peak_mb=first.peak_mb + others)


# What makes a run's memory smaller, in the config's names, each tried on the run's own work: a
# bfloat16 base, a quantized one, a smaller batch, a smaller rank.
def fit_problem(plan: Plan, store: Path, target: Target, limit_mb: float, gpu: str = "the GPU") -> str | None:
    """None if the run is predicted to fit in `limit_mb` of accelerator memory; else one line with
    the numbers and the settings that are predicted to make it fit."""
    need = predict(plan, store, target)
    if need.peak_mb <= limit_mb:
        return None
    spec, fixes = plan.spec, []
    tries = []
    if spec.method not in QUANTIZED_METHODS and spec.model.dtype == "float32":
        tries.append(("model.dtype=bfloat16", replace(spec, model=replace(spec.model, dtype="bfloat16"))))
    if spec.method in ("lora", "dora", "rslora", "pissa"):
        tries.append(("method=qlora", replace(spec, method="qlora")))
    b = spec.train.batch_size // 2
    while b >= 1:
        tries.append((f"train.batch_size={b}", replace(spec, train=replace(spec.train, batch_size=b))))
        b //= 2
    if spec.method != "full" and plan.targets and spec.lora.r > 1:
        tries.append((f"lora.r={spec.lora.r // 2}", replace(spec, lora=replace(spec.lora, r=spec.lora.r // 2))))
    runtime = need.peak_mb - need.work.model_mb()
    for setting, changed in tries:
        mb = runtime + work(replace(plan, spec=changed), target.device).model_mb()
        if mb <= limit_mb and not any(f.startswith(setting.split("=")[0] + "=") for f in fixes):
            fixes.append(f"{setting} ({mb:,.0f} MiB)")
    fit = f"; predicted to fit with {', or '.join(fixes)}" if fixes else "; no single setting is predicted to fit it"
    return (f"predicted {need.memory_name} {need.peak_mb:,.0f} MiB does not fit {gpu}'s {limit_mb:,.0f} MiB "
            f"({spec.method}, train.batch_size={spec.train.batch_size}, train.max_length={spec.train.max_length}"
            f"{f', lora.r={spec.lora.r}' if plan.targets else ''}, model.dtype={spec.model.dtype}; {need.basis})"
            f"{fit}")


def task_lengths_of(plan: Plan, tokenizer=None) -> TaskLengths:
    """The token lengths of the run's task rows, with `tokenizer` (else its model's, loaded once a process)."""
    spec = plan.spec
    if tokenizer is not None:
        return task_lengths(plan.task, tokenizer, spec.train.max_length, plan.head)
    lengths = _cached_lengths(json.dumps(spec.model.__dict__, sort_keys=True, default=dict), plan.task.spec,
                              spec.train.max_length, plan.head)
    if lengths is None:
        raise ValueError(f"model {spec.model.name}: its tokenizer cannot be loaded here, so its rows cannot be counted")
    return lengths


@lru_cache(maxsize=16)  # a sweep's runs share their model and task: tokenize its rows once (or fail once)
def _cached_lengths(model_json: str, task_spec: TaskSpec, max_length: int, head: str) -> TaskLengths | None:
    model, task = ModelSpec(**json.loads(model_json)), load_task(task_spec)  # load_task: cached, read once

    def count() -> dict:
        from ..model import loading

        try:
            tokenizer = loading.load_tokenizer(model)
        except Exception as err:  # a hub model not in the cache, no hub: no prediction, asked once a process
            raise _NoTokenizer from err
        return asdict(task_lengths(task, tokenizer, max_length, head))

    rows = json.dumps([task.train, task.eval, task.test, task.tests, task.labels], sort_keys=True, default=str)
    inputs = {"task": asdict(task_spec), "rows": hashlib.sha256(rows.encode()).hexdigest(),
              "max_length": max_length, "head": head}
    try:
        value = plan_cache.cached("lengths", model, inputs, count)
    except _NoTokenizer:
        return None
    return TaskLengths.from_dict(value)


class _NoTokenizer(Exception):
    """The model's tokenizer cannot be loaded here."""
