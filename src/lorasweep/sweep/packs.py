"""Which runs of a sweep train together in one pack (lorasweep.run.pack), and the packs themselves.

`hydra.launcher.pack=true` packs every group of compatible runs (split so that each of the n_jobs
workers gets one), `pack=K` makes packs of at most K runs, `pack=auto` packs a group only where the
plan predicts that it pays, in as many packs as predicted fastest (sweep/pack_auto), `pack=false` (the
default) trains each run alone. A pack shares one frozen base and one stream of batches, so its runs must agree on all that
shapes them: model, task and its data, batch size, evaluation batch size, steps or epochs,
max_length, eval_steps. They may differ in all that makes them different runs: method among the
adapter methods whose base stays frozen (lora, rslora, dora), rank, alpha, projections, dropout, lr,
weight decay, warmup and seed. Anything else trains alone, and the plan says why (why_alone:
seq2seq, completion on an encoder-decoder; a run adapting MoE experts, a pack's layers are linear). A
tracked run packs: each run of a pack is its own tracker run.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import Future
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ..config.checks import data_parallel
from ..config.projection_codes import parameter_letters
from ..config.spec import from_config
from ..errors import ConfigError, WorkerDiedError
from ..executors.job import Job
from ..executors.worker import PACK, pack_failure, pack_task

PACKABLE_METHODS = ("lora", "rslora", "dora")  # the base stays frozen and shared; pissa rewrites it, full trains it
SHARED_TRAIN = ("epochs", "max_steps", "batch_size", "eval_batch_size", "eval_steps", "max_length")

RESEND = "resend"  # per_run's outcome for a run its task's result does not hold

T = TypeVar("T")

AUTO = "auto"  # pack_size's value for hydra.launcher.pack=auto (sweep/pack_auto)


def pack_size(value: Any) -> int | str | None:
    """hydra.launcher.pack: None (no packs), 0 (as many runs a pack as fit the workers), K >= 2 or
    AUTO. ConfigError naming the value otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if value is True:  # before the test for 1: True == 1 in Python
        return 0
    if value is None or value is False or value == 1:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 2:
        return value
    raise ConfigError(f"hydra.launcher.pack={value!r} is invalid: it is how many compatible runs train together "
                      f"over one base, true (every compatible run, split between the workers), auto (packs where "
                      f"they are predicted to pay), false (each run alone, the default) or a whole number 2 or more")


def check_pack_gpus(size: int | str | None, gpus_per_run: int) -> None:
    """A pack (pack_size) trains its runs in one process on one device: never data-parallel."""
    if size is not None and gpus_per_run > 1:
        raise ConfigError(f"hydra.launcher.pack={'true' if size == 0 else size} cannot be combined with "
                          f"hydra.launcher.gpus_per_run={gpus_per_run}: a pack trains its runs in one process "
                          f"on one GPU, and a run on {gpus_per_run} GPUs trains alone; use pack=false "
                          f"(default), or gpus_per_run=1")


def optuna_pack_size(value: Any) -> int | None:
    """hydra.launcher.pack under the Optuna sweeper: None or K, the trials a worker trains at once.
    pack=true has no meaning there: trials are asked as workers free up, not known in advance."""
    size = pack_size(value)
    if size == 0 or size == AUTO:
        raise ConfigError(f"hydra.launcher.pack={'true' if size == 0 else size} needs a grid, whose runs are known in advance: an Optuna "
                          "sweep asks its trials as workers free up; give pack=K, the trials a worker trains "
                          "at once (a larger K asks more trials before any is told)")
    return size


def why_alone(cfg: Mapping[str, Any]) -> str | None:
    """Why a run cannot join a pack, or None if it can."""
    if str((cfg.get("lora") or {}).get("r")) == "auto":
        return "lora.r=auto picks its rank at planning"
    spec = from_config(cfg)
    if spec.method not in PACKABLE_METHODS:
        return f"method={spec.method} (packs hold {', '.join(PACKABLE_METHODS)})"
    if spec.tokens.new:
        return "it injects new tokens"
    if spec.task.kind == "completion":
        from ..run.model_facts import task_head  # from the plan cache, else transformers' auto mappings

        if task_head(spec.model, spec.task.kind) == "seq2seq_lm":
            return f"model={spec.model.name} trains completion as seq2seq (packs hold classification and causal-LM runs)"
    if parameter_letters(spec.model.family, spec.lora.proj, spec.model.projections):
        return "it adapts MoE experts (peft's parameter adapters; a pack holds linear layers)"
    return None


def pack_key(cfg: Mapping[str, Any]) -> str:
    """What the runs of one pack share: equal keys, one pack (if the size allows)."""
    d = from_config(cfg).defining()
    # the Trainer ignores epochs when max_steps is set: runs that differ only there step alike
    shared = {k: d["train"][k] for k in SHARED_TRAIN if not (k == "epochs" and d["train"]["max_steps"] > 0)}
    # train.compile is outside the run key (the same run), but a pack compiles its step or not as a whole
    compiled = bool((cfg.get("train") or {}).get("compile", False))
    return json.dumps({"model": d["model"], "task": d["task"], "train": shared, "compile": compiled,
                       "results_dir": str(cfg.get("results_dir"))}, sort_keys=True, default=str)


def make_packs(items: Sequence[T], cfg_of: Callable[[T], Mapping[str, Any]], size: int | str | None,
               workers: int = 1, split: Callable[[list[T]], int] | None = None) -> list[list[T]]:
    """`items` as packs (lists of 2 or more, in sweep order) and runs alone (lists of one). `size`:
    pack_size's value; 0 spreads each compatible group over `workers` packs; AUTO asks `split(group)`
    how many packs a group makes (its length: each run alone; sweep/pack_auto). Packs of a group are
    balanced (9 runs at most 4 a pack: 3+3+3, not 4+4+1)."""
    if size is None:
        return [[item] for item in items]
    groups: dict[str, list[T]] = {}
    units: list[list[T]] = []
    for item in items:
        cfg = cfg_of(item)
        if why_alone(cfg) is None:
            groups.setdefault(pack_key(cfg), []).append(item)
        else:
            units.append([item])
    for group in groups.values():
        if size == AUTO:
            n = split(group) if split is not None and len(group) > 1 else len(group)
        else:
            cap = size or math.ceil(len(group) / max(1, workers))
            n = math.ceil(len(group) / max(1, cap))
        units += balanced(group, n)
    position = {id(item): i for i, item in enumerate(items)}
    return sorted(units, key=lambda unit: position[id(unit[0])])


def balanced(group: Sequence[T], n: int) -> list[list[T]]:
    """`group` in `n` consecutive parts whose sizes differ by at most one."""
    return [list(group[i * len(group) // n:(i + 1) * len(group) // n]) for i in range(n)]


def unit_job(unit: Sequence[Any]) -> Job:
    """What an executor is sent for a unit of make_packs (runs with a `cfg`, a `folder` and the
    Optuna trial they report to, `reports_to`, as the driver's sources hold them): a run alone, on
    its data-parallel ranks, or a pack, whose log goes to its first run's folder."""
    if len(unit) == 1:
        run = unit[0]
        return Job.alone(run.cfg, run.folder, run.reports_to, data_parallel(run.cfg))
    return pack_task([run.cfg for run in unit], [run.folder for run in unit], [run.reports_to for run in unit])


def per_run(task: Future, run_keys: Sequence[str]) -> list[Future]:
    """A finished task's outcome for each of its runs: the task itself for a run alone; else each
    run's own entry in the task's result, matched by run key (its result, {"claimed_by"}, its own
    failure, or "died" with its worker), or the task's exception for each run if it raised. A run the
    result holds no entry for gets {RESEND: ...} (see to_resend): a restarted driver regroups the runs
    still held by SLURM jobs and re-attaches each group to its first run's job, whose result covers
    the runs that job was sent with, not necessarily the others."""
    error = task.exception()
    result = None if error is not None else task.result()
    packed = isinstance(result, dict) and PACK in result
    if error is None and not packed and len(run_keys) == 1:
        return [task]
    entries = result[PACK] if packed else [result]
    by_key = {entry["run_key"]: entry for entry in entries if isinstance(entry, dict) and "run_key" in entry}
    futures = [Future() for _ in run_keys]
    for future, key in zip(futures, run_keys):
        outcome = by_key.get(key)
        failure = error or pack_failure(outcome)  # the task's, or its own (recorded: run/pack)
        if failure is not None:
            future.set_exception(failure)
        elif outcome is None and len(run_keys) > 1:
            future.set_result({RESEND: "the job its pack was re-attached to was sent without it"})
        elif outcome is None:  # sent alone to the job its folder names, which must hold it: never sent again
            future.set_exception(RuntimeError(f"the result of the job this run was sent to holds no outcome "
                                              f"for run {key}"))
        elif "died" in outcome:  # its worker died before it finished (lorasweep.executors.local)
            future.set_exception(WorkerDiedError(outcome["died"]))
        else:
            future.set_result(outcome)
    return futures


def to_resend(future: Future) -> bool:
    """per_run found no outcome for this run in the task it was part of: the driver sends it again
    (alone: it trains, or the executor re-attaches it to the job that holds it)."""
    return future.exception() is None and isinstance(future.result(), dict) and RESEND in future.result()
