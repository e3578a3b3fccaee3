"""What an Optuna sweep found: its summary lines."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..console import say
from .optuna_space import params_text


def say_summary(study: optuna.Study, counted: list, n_trials: int, objectives: list[str],
                stats: dict[str, int]) -> None:
    """The summary line (`counted`: the trials that count towards n_trials), then the best trial or
    the Pareto front."""
    by = {s: sum(1 for t in counted if t.user_attrs.get("status") == s)
          for s in ("done", "pruned", "failed", "diverged", "skipped_budget")}
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    diverged = f"{by['diverged']} diverged, " if by["diverged"] else ""  # said only when there is one
    say(f"sweep: {len(counted)}/{n_trials} trials finished in study {study.study_name!r}: "
        f"{len(complete)} complete, {by['pruned']} pruned, {by['failed']} failed, {diverged}"
        f"{by['skipped_budget']} over budget; this time {stats['trained']} trained, "
        f"{stats['reused']} reused" + ("; nothing left to run" if not stats["trained"] else ""))
    if not complete:
        return
    if len(objectives) == 1:
        best = study.best_trial
        say(f"best {objectives[0]} = {best.value:.4g} (trial #{best.number}): {params_text(best)}")
    else:
        say(f"Pareto front ({', '.join(objectives)}):")
        for t in sorted(study.best_trials, key=lambda t: t.values):
            say(f"  {' '.join(f'{v:.4g}' for v in t.values)}  trial #{t.number}: {params_text(t)}")
