"""`python launch.py -m +sweep=budget_1m hydra/launcher=plan`: what an Optuna study would cost, before it runs.

A study picks each trial from the results of those before it, so its runs cannot be listed in advance.
What can be planned is the space it picks from: each cell of its discrete values (choices, integer
ranges; a log-spaced integer interval at its two ends) as the plan launcher plans a grid's runs
(sweep/plan_table: trainable count, budget, where each stands, predicted cost), a float drawn from an
interval planned at its low end, as a line under the table says (lr, dropout: they do not change a
run's cost).
Under the table, one line says what n_trials trials of it would take: a grid sampler trains its cells,
any other sampler n_trials picks, each costing one cell still to run (a cell over the budget is told
pruned without training; one already done is reused).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ..console import duration, say
from ..errors import ConfigError, SweepExit
from . import optuna_space as space_of
from .optuna_settings import OptunaSettings
from .optuna_study import check_search
from .plan_table import PlanRow, plan_runs
from .predicted import local_where, wall_seconds
from .status import TO_RUN

MAX_CELLS = 1000  # a space larger than this is not listed: say so rather than plan for minutes


def plan_study(settings: OptunaSettings, configs: Callable[[Sequence[str]], tuple[Any, dict]],
               arguments: Sequence[str]) -> None:
    """Print the study's cells and what n_trials of them would take; nothing trained or written.
    A setting that the study would refuse is refused here the same way (one line, exit 2)."""
    params_conf = [f"{k}={v}" for k, v in settings.params.items()] + list(arguments)
    try:
        space, fixed = space_of.parse_space(params_conf)
        check_search(settings, space)  # as the study checks them (its storage and store, which it writes: not)
        cells, drawn = space_cells(space)
    except ConfigError as e:
        say(f"sweep: {e}; nothing was trained")
        raise SweepExit(2) from None
    job_overrides = [[f"{k}={v}" for k, v in fixed.items()] + [f"{k}={space_of.format_value(v)}" for k, v in cell.items()]
                     for cell in cells]
    rows, _, text = plan_runs(job_overrides, configs, local_where(settings.n_jobs), total=False)
    print(text)
    if settings.custom_search_space:
        drawn.append(f"hydra.sweeper.custom_search_space={settings.custom_search_space} sets more values in each "
                     f"trial: not planned")
    for line in drawn:
        print(f"  {line}")
    print(study_line(rows, settings, space_of.is_grid(settings.sampler)), flush=True)


def space_cells(space: Mapping[str, BaseDistribution]) -> tuple[list[dict[str, Any]], list[str]]:
    """(every cell of the space's discrete values, with each float interval at its low end; a line per
    value so planned). ConfigError when the cells are more than MAX_CELLS."""
    values: dict[str, list[Any]] = {}
    drawn = []
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution) or (isinstance(d, IntDistribution) and not d.log):
            values[name] = space_of.grid_of({name: d})[name]  # as a grid sampler walks it
        elif isinstance(d, IntDistribution):  # log-spaced: its ends
            values[name] = sorted({d.low, d.high})
        else:
            values[name] = [d.low]
            drawn.append(f"{name} is drawn from [{space_of.short(d.low)}, {space_of.short(d.high)}]"
                         f"{' (log)' if d.log else ''}: planned at {space_of.short(d.low)}")
    n = math.prod(len(v) for v in values.values())
    if n > MAX_CELLS:
        raise ConfigError(f"the search space has {n:,} cells, more than the {MAX_CELLS:,} a plan lists: plan a "
                          f"slice of it (fewer choices), or run the study")
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())], drawn


def study_line(rows: list[PlanRow], settings: OptunaSettings, grid: bool) -> str:
    """What n_trials trials of these cells would take, n_jobs at a time: "study: 20 trials, each a cell of
    these 30 as its sampler picks: 47s to 1m05s a trial, about 18m (16m to 22m) for the 20, 1 at a time, ..."."""
    costs = sorted(r.cost.total_s for r in rows if r.cost is not None and r.status.state in TO_RUN)
    skipped = sum(r.over_budget for r in rows)
    reused = sum(r.status.state not in TO_RUN and not (r.over_budget or r.error) for r in rows)
    n_jobs = settings.n_jobs
    trials = min(settings.n_trials, len(rows)) if grid else settings.n_trials
    if not grid:
        picks = f"each a cell of these {len(rows)} as its sampler picks"
    elif trials < len(rows):
        picks = f"{trials} of these {len(rows)} cells, in the grid sampler's order"
    else:
        picks = f"these {len(rows)} cells (the grid sampler)"
    head = f"study: {trials} trial{'s' * (trials != 1)}, {picks}"
    counted = [f"{skipped} over budget: told pruned, not trained"] * bool(skipped)
    counted += [f"{reused} done or under way: reused"] * bool(reused)
    head += f" ({'; '.join(counted)})" if counted else ""
    if not costs:
        return head + ": no cell still to run has a predicted cost"
    if grid and trials == len(rows):  # every cell: the grid's own total
        return head + f": predicted {duration(wall_seconds(costs, n_jobs))} for the {len(costs)} to run, {n_jobs} at a time"
    mean = sum(costs) / len(costs)
    least, most, about = (duration(wall_seconds([c] * trials, n_jobs)) for c in (costs[0], costs[-1], mean))
    each = duration(costs[0]) if duration(costs[0]) == duration(costs[-1]) else f"{duration(costs[0])} to {duration(costs[-1])}"
    spread = f" ({least} to {most})" if least != most else ""
    return (head + f": {each} a trial, about {about}{spread} for the {trials}, {n_jobs} at a time, if each trains "
            f"a cell still to run")
