"""What an Optuna sweep found: its summary lines, and `optimization_results.yaml` in the sweep folder
(hydra.sweep.dir), as hydra-optuna-sweeper writes it.

One objective:                          Several (the Pareto front, in the study's order):
    name: optuna                            name: optuna
    best_params: {lora.r: 4, ...}           solutions:
    best_value: 0.62                        - params: {lora.r: 4, ...}
                                              values: [0.62, 3738]

The study's best over all its trials, also those of earlier commands that it continues. Written
atomically (run/store.py), at every end of a sweep: finished, stopped early, interrupted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from ..console import say
from ..errors import StoreError
from ..run.store import write_text_atomically
from .optuna_space import params_text

RESULTS_FILE = "optimization_results.yaml"


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


def optimization_results(study: optuna.Study) -> dict[str, Any] | None:
    """What the file holds; None while the study has no complete trial (no best to speak of)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(study.directions) == 1:
        best = study.best_trial
        return {"name": "optuna", "best_params": dict(best.params), "best_value": best.value}
    return {"name": "optuna",
            "solutions": [{"params": dict(t.params), "values": list(t.values)} for t in study.best_trials]}


def write_optimization_results(study: optuna.Study, sweep_dir: Path | None) -> Path | None:
    """Write the file into `sweep_dir` and say where; a failed write is said, never raised (the
    study itself is safe in its storage). Returns the file written, or None."""
    if sweep_dir is None:
        return None
    results = optimization_results(study)
    if results is None:
        say(f"no complete trial yet: no {RESULTS_FILE} written")
        return None
    target = Path(sweep_dir) / RESULTS_FILE
    try:
        write_text_atomically(target, OmegaConf.to_yaml(OmegaConf.create(results)))
    except StoreError as e:
        say(f"could not write {RESULTS_FILE}: {e}")
        return None
    say(f"optimization results: {target}")
    return target


def result_field(result: dict, dotted: str) -> Any:
    """result["metrics"]["test"]["accuracy"] for "metrics.test.accuracy"; None when absent."""
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
