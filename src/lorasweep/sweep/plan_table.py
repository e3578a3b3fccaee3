"""The plan of a sweep as a table: one row per run, counted from configs alone, where each run stands
(sweep/status.py: done 0.623, running ... ETA, queued, failed, interrupted, ...), and a total line.
The GPU(s) each run used or uses and its peak GPU memory (sweep/gpu_usage.py) are columns only when
some run has one: a CPU-only sweep's table is as before."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..config.checks import DATA_PARALLEL
from ..run.cost import Cost
from ..run.predict import pack_cost
from ..run.store import store_dir, writable_problem
from .compose import varying_overrides
from .gpu_usage import GpuUsage, gpu_usage
from .pack_auto import AutoSplit
from .packs import AUTO, make_packs, why_alone
from .predicted import Where, run_cost, wall_seconds
from .status import STATES, TO_RUN, RunStatus, duration, run_status, settle
from .triage import triage


@dataclass(frozen=True)
class PlanRow:
    overrides: str
    trainable: int | None = None
    model_total: int | None = None  # all parameters as peft counts them: the base's, plus what an adapter adds
    budget: int | None = None
    rank: str = ""                 # "22 (auto)" when lora.r=auto chose it
    over_budget: bool = False
    error: str = ""
    unreadable: str = ""           # its stored result.json cannot be read: it trains again
    status: RunStatus = field(default_factory=lambda: RunStatus("not started", "not started"))  # where it stands
    gpu: GpuUsage = field(default_factory=GpuUsage)  # the GPU(s) it used or uses, its peak GPU memory
    pack: str = ""                 # with hydra.launcher.pack: the pack it would train in, or why alone
    covers: str = ""               # lora.proj=all: the modules it adapts, on which model
    cost: Cost | None = None       # its predicted cost, for a run still to run (sweep/predicted)
    pack_id: int | None = None     # the pack it would train in (with_packs)


def plan_row(label: str, cfg: Mapping[str, Any], where: Where | None = None) -> PlanRow:
    """Plan one run, writing nothing; a config error becomes the row's error rather than stopping
    the whole plan. `where`: where its launcher trains it, for its predicted cost (None: none)."""
    decision = triage(cfg, record=False)
    plan, status = decision.plan, run_status(decision)
    if plan is None:
        return PlanRow(label, error=decision.error, status=status)
    spec = plan.spec
    rank = f"{spec.lora.r} (auto)" if plan.auto_rank else (str(spec.lora.r) if plan.targets else "-")
    # peft's print_trainable_parameters divides by all parameters, the adapters' included: an adapter
    # method adds every parameter it trains (A, B, DoRA magnitudes, the head's trained copy, token rows)
    total = plan.base_total + (plan.predicted if plan.targets else 0)
    covers = f"lora.proj=all on model={spec.model.name} adapts {plan.covers}" if plan.covers else ""
    # still to run, or submitted to SLURM (settle_rows may find it left the queue: to run again)
    to_run = where is not None and status.state in TO_RUN + ("submitted",) and not plan.over_budget
    return PlanRow(label, plan.predicted, total, plan.budget, rank, plan.over_budget,
                   unreadable=decision.unreadable, status=status, gpu=gpu_usage(decision, status), covers=covers,
                   cost=run_cost(plan, store_dir(cfg), where) if to_run else None)


def plan_runs(job_overrides: Sequence[Sequence[str]], configs: Callable[[Sequence[str]], tuple[Any, dict]],
              where: Where, gpus_per_run: int = 1, pack: int | str | None = None, total: bool = True
              ) -> tuple[list[PlanRow], list[Any], str]:
    """The plan of these runs, writing nothing: (a row each, each one's composed node, the text to print:
    the runs every run shares, the table and its total line). `configs` composes a run's (node, config);
    `where` is where the runs would train, for their predicted costs; `pack`: the packs the local
    launcher would make; `total`: the sweep's predicted wall time in the total line."""
    shared, labels = varying_overrides(job_overrides)
    rows, cfgs, nodes, problems = [], [], [], {}
    for overrides, label in zip(job_overrides, labels):
        node, cfg = configs(overrides)
        if gpus_per_run > 1:
            cfg[DATA_PARALLEL] = gpus_per_run
        rows.append(plan_row(label, cfg, where))
        store = str(store_dir(cfg))
        if store not in problems:
            problems[store] = writable_problem(store)
        cfgs.append(cfg)
        nodes.append(node)
    rows, notes = settle_rows(rows), []
    if pack is not None:
        rows, notes = with_packs(rows, cfgs, pack, where)
    text = format_plan(rows, {d: why for d, why in problems.items() if why}, where.n_jobs if total else None, notes)
    return rows, nodes, ("every run: " + " ".join(shared) + "\n" if shared else "") + text


def settle_rows(rows: list[PlanRow]) -> list[PlanRow]:
    """The rows with their SLURM jobs' queue states, asked once for the whole plan (status.settle)."""
    statuses = settle([r.status for r in rows])
    return [r if s is r.status else replace(r, status=s) for r, s in zip(rows, statuses)]


def with_packs(rows: list[PlanRow], cfgs: list[Mapping[str, Any]], size: int | str, where: Where
               ) -> tuple[list[PlanRow], list[str]]:
    """The rows with the pack each run still to run would train in ("pack 1 of 2 (5 runs)"), or why
    it trains alone, as sweep/packs groups them for a grid started now on `where`'s n_jobs workers;
    and, with pack=auto, each group's choice in a line (sweep/pack_auto)."""
    waiting = [i for i, r in enumerate(rows) if r.status.state in TO_RUN and not r.error and not r.over_budget]
    split = AutoSplit(lambda i: rows[i].cost, lambda i: cfgs[i], where) if size == AUTO else None
    units = make_packs(waiting, lambda i: cfgs[i], size, where.n_jobs, split)
    packs = [u for u in units if len(u) > 1]
    label = {i: f"pack {n} of {len(packs)} ({len(unit)} runs)" for n, unit in enumerate(packs, 1) for i in unit}
    pack_id = {i: n for n, unit in enumerate(packs, 1) for i in unit}
    for unit in units:
        if len(unit) == 1:
            auto = split is not None and unit[0] in split.kept_alone
            label[unit[0]] = f"alone: {why_alone(cfgs[unit[0]]) or ('pack=auto' if auto else 'no other run to pack it with')}"
    rows = [replace(r, pack=label.get(i, ""), pack_id=pack_id.get(i)) for i, r in enumerate(rows)]
    return rows, split.lines if split else []


def format_plan(rows: list[PlanRow], store_problems: dict[str, str] | None = None, n_jobs: int | None = 1,
                notes: Sequence[str] = ()) -> str:
    """The table and its total line; `store_problems` (results_dir -> why it looks not writable, from
    lorasweep.run.store.writable_problem: looked at, not written) goes at the end of the total line.
    `n_jobs`: the runs (or packs) the launcher keeps in flight, for the sweep's predicted time (None:
    none said); `notes`: lines under the table (pack=auto's choices)."""
    gpus, packs = any(r.gpu.any for r in rows), any(r.pack for r in rows)
    costs = [r.cost for r in rows if r.cost is not None]
    memory = ("peak RSS" if all(c.device == "cpu" for c in costs) else "peak GPU mem") if costs else ""
    head = ("run", "r", "trainable", "% of all (peft)", "% of budget", "over budget") \
        + (("gpu", "peak gpu mem") if gpus else ()) + (("train", "whole run", memory) if costs else ()) \
        + ("status",) + (("pack",) if packs else ())
    table = [head] + [_cells(r)[:-1] + (_gpu_cells(r.gpu) if gpus else ()) + (_cost_cells(r.cost) if costs else ())
                      + _cells(r)[-1:] + ((r.pack,) if packs else ()) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    # the run, its status and its pack read left to right; numbers line up on the right
    left = {0, head.index("status"), len(head) - 1}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"  {covers}" for covers in dict.fromkeys(r.covers for r in rows if r.covers)]
    lines += [f"  error: {r.overrides}: {r.error}" for r in rows if r.error]
    lines += [f"  {r.overrides or '(defaults)'}: {r.unreadable}: it trains again" for r in rows if r.unreadable]
    lines += [f"  {r.overrides or '(defaults)'}: {r.status.detail}" for r in rows if r.status.detail]
    lines += [f"  predicted cost: {basis}" for basis in dict.fromkeys(_basis(c) for c in costs)]
    lines += [f"  {note}" for note in notes]
    lines.append(total_line(rows) + (predicted_total(rows, n_jobs) if n_jobs else "") + "".join(f"; results_dir={d} is not writable: {why}"
                                            for d, why in (store_problems or {}).items()))
    return "\n".join(lines)


def total_line(rows: list[PlanRow]) -> str:
    """"total: 9 runs: 2 done, 1 running, 3 over budget, 3 not started; 3 to run": every state that
    some run is in, and the runs a grid started now would train (not started, interrupted, failed, ...)."""
    counts = {state: sum(r.status.state == state for r in rows) for state in STATES}
    words = {"unreadable": "with an unreadable result", "error": "with errors"}
    parts = [f"{n} {words.get(state, state)}" for state, n in counts.items() if n]
    to_run = sum(counts[state] for state in TO_RUN)
    runs = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
    return f"total: {runs}" + (f": {', '.join(parts)}" if parts else "") + f"; {to_run} to run"


def predicted_total(rows: list[PlanRow], n_jobs: int) -> str:
    """"; predicted 12m30s for the 9 runs to run, 2 at a time (packs: as packed)": the sweep's wall
    time, its units (runs alone, packs) n_jobs at a time; "" when no run to run has a prediction."""
    costs = [r for r in rows if r.cost is not None and r.status.state in TO_RUN]
    if not costs:
        return ""
    units: dict[object, list[Cost]] = {}
    for i, r in enumerate(costs):
        units.setdefault(("pack", r.pack_id) if r.pack_id is not None else ("run", i), []).append(r.cost)
    durations = [pack_cost(u).total_s if len(u) > 1 else u[0].total_s for u in units.values()]
    packed = sum(len(u) > 1 for u in units.values())
    how = f", {packed} pack{'s' if packed != 1 else ''}" if packed else ""
    return (f"; predicted {duration(wall_seconds(durations, n_jobs))} for the {len(costs)} run"
            f"{'s' if len(costs) != 1 else ''} to run, {n_jobs} at a time{how}")


def _basis(c: Cost) -> str:
    return f"{c.basis}: time within ~{c.time_error:.0%}, {c.memory_name} within ~{c.memory_error:.0%}"


def _cost_cells(c: Cost | None) -> tuple[str, str, str]:
    if c is None:
        return "", "", ""
    return duration(c.train_s), duration(c.total_s), f"{c.peak_mb:,.0f} MiB"


def _gpu_cells(usage: GpuUsage) -> tuple[str, str]:
    return usage.gpus, f"{usage.peak_mb:,.0f} MiB" if usage.peak_mb is not None else ""


def _cells(r: PlanRow) -> tuple[str, ...]:
    if r.error:
        return (r.overrides or "(defaults)", "", "error", "", "", "", r.status.cell)
    budget = f"{100 * r.trainable / r.budget:.1f}%" if r.budget else "-"
    return (r.overrides or "(defaults)", r.rank, f"{r.trainable:,}", f"{100 * r.trainable / r.model_total:.3f}%",
            budget, "OVER" if r.over_budget else "no", r.status.cell)
