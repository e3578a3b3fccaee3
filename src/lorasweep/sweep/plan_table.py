"""The plan of a sweep as a table: one row per run, counted from configs alone, and a total line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .triage import triage


@dataclass(frozen=True)
class PlanRow:
    overrides: str
    trainable: int | None = None
    model_total: int | None = None  # all parameters as peft counts them: the base's, plus what an adapter adds
    budget: int | None = None
    rank: str = ""                 # "22 (auto)" when lora.r=auto chose it
    over_budget: bool = False
    done: bool = False
    error: str = ""
    unreadable: str = ""           # its stored result.json cannot be read: it trains again
    running: str = ""              # another process trains it now: who (lorasweep.run.claims)


def plan_row(label: str, cfg: Mapping[str, Any]) -> PlanRow:
    """Plan one run, writing nothing; a config error becomes the row's error rather than stopping
    the whole plan."""
    decision = triage(cfg, record=False)
    plan = decision.plan
    if plan is None:
        return PlanRow(label, error=decision.error)
    spec = plan.spec
    rank = f"{spec.lora.r} (auto)" if plan.auto_rank else (str(spec.lora.r) if plan.targets else "-")
    # peft's print_trainable_parameters divides by all parameters, the adapters' included: an adapter
    # method adds every parameter it trains (A, B, DoRA magnitudes, the head's trained copy, token rows)
    total = plan.base_total + (plan.predicted if plan.targets else 0)
    return PlanRow(label, plan.predicted, total, plan.budget, rank, plan.over_budget,
                   decision.verdict == "done", unreadable=decision.unreadable, running=decision.holder)


def format_plan(rows: list[PlanRow], store_problems: dict[str, str] | None = None) -> str:
    """The table and its total line; `store_problems` (results_dir -> why it looks not writable, from
    lorasweep.run.store.writable_problem: looked at, not written) goes at the end of the total line."""
    head = ("run", "r", "trainable", "% of all (peft)", "% of budget", "over budget", "done")
    table = [head] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"  error: {r.overrides}: {r.error}" for r in rows if r.error]
    lines += [f"  {r.overrides or '(defaults)'}: {r.unreadable}: it trains again" for r in rows if r.unreadable]
    lines += [f"  {r.overrides or '(defaults)'}: being trained by {r.running}" for r in rows if r.running]
    over = sum(r.over_budget for r in rows)
    done = sum(r.done for r in rows)
    errors = sum(bool(r.error) for r in rows)
    running = sum(bool(r.running) for r in rows)
    to_run = sum(not (r.over_budget or r.done or r.error or r.running) for r in rows)
    lines.append(f"total: {len(rows)} runs, {over} over budget, {done} already done, "
                 + (f"{running} being trained elsewhere, " if running else "")
                 + f"{errors} with errors, {to_run} to run"
                 + "".join(f"; results_dir={d} is not writable: {why}" for d, why in (store_problems or {}).items()))
    return "\n".join(lines)


def _cells(r: PlanRow) -> tuple[str, ...]:
    if r.error:
        return (r.overrides or "(defaults)", "", "error", "", "", "", "")
    budget = f"{100 * r.trainable / r.budget:.1f}%" if r.budget else "-"
    return (r.overrides or "(defaults)", r.rank, f"{r.trainable:,}", f"{100 * r.trainable / r.model_total:.3f}%",
            budget, "OVER" if r.over_budget else "no", "yes" if r.done else ("running" if r.running else "no"))
