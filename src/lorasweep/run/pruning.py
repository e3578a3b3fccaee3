"""Pruning across processes: a run in a worker reports its evaluations to the sweep's Optuna trial.

The sweeper (in the driver process) asks the study for a trial and hands the run, beside its config
in its job (executors/job.Job.trials), a small dict {storage, study_name, trial_id, pruner, metric}. The worker opens the same study from
its storage (a URL or journal:///path, opened by study_storage.open_storage), so the pruner sees every other trial's intermediate values, whatever process ran them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..compat import reopen_trial
from ..errors import ConfigError
from .store import storage_error
from .study_storage import open_storage

Reporter = Callable[[int, dict], bool]  # same shape as lorasweep.run.loop.Reporter (no torch import here)

PRUNERS = ("none", "median", "hyperband")


def make_pruner(spec: Any):
    """An Optuna pruner from `none`, `median`, `hyperband`, or a dict {name: ..., **its arguments}.
    ConfigError names the setting, its value and what is valid: the sweep's driver makes one before
    the study starts (sweep/optuna_study), so that no trial loads a model only to fail here."""
    import optuna

    name, kwargs = pruner_name_and_args(spec)
    if name == "none":
        return optuna.pruners.NopPruner()
    factory = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}[name]
    try:
        return factory(**kwargs)
    except TypeError as e:  # an argument the pruner does not take: name it, with the valid ones
        raise ConfigError(f"hydra.sweeper.pruner: {name} does not accept {sorted(kwargs)}: {e}") from None
    except ValueError as e:  # a value it refuses (n_startup_trials=-1): Optuna's words name the argument
        raise ConfigError(f"hydra.sweeper.pruner={dict(spec) if isinstance(spec, Mapping) else spec}: {e}") from None


def pruner_name_and_args(spec: Any) -> tuple[str, dict[str, Any]]:
    if spec is None or spec is False:
        return "none", {}
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        kwargs = {str(k): v for k, v in spec.items() if k != "name"}
        name = spec.get("name")
    else:
        raise ConfigError(f"hydra.sweeper.pruner={spec!r} is invalid: a name ({', '.join(PRUNERS)}) "
                         f"or a mapping {{name: median, n_startup_trials: 5, ...}}")
    if str(name).lower() not in PRUNERS:
        field = "hydra.sweeper.pruner" if isinstance(spec, str) else "hydra.sweeper.pruner.name"
        raise ConfigError(f"{field}={name!r} is unknown: choose one of {', '.join(PRUNERS)}")
    return str(name).lower(), kwargs


def reporter_for(trial_cfg: Mapping[str, Any]) -> Reporter:
    """A reporter for run_from_config: reports `metric` at each evaluation, True when the pruner says stop.

    The study is opened on the first evaluation only: a run that is skipped (already done) costs nothing.
    """
    metric = str(trial_cfg.get("metric", "accuracy"))
    trial = None

    def report(step: int, metrics: dict) -> bool:
        nonlocal trial
        value = metrics.get(metric)
        if value is None and metric == "accuracy":  # chat/completion tasks: their objective's metric
            value = metrics.get("token_accuracy")
        if value is None:
            return False
        try:
            if trial is None:
                trial = _open_trial(trial_cfg)
            trial.report(float(value), int(step))
            return bool(trial.should_prune())
        except Exception as e:
            if type(e).__name__ == "UpdateFinishedTrialError":  # optuna's, without importing optuna here
                # the trial was closed under us: a restarted driver declared it abandoned and asked its
                # params again as a new trial, which re-attached to this very run (a SLURM job). Train on.
                return False
            # the storage refused the write (full, read-only): said with the storage's name, which the
            # run's failure would otherwise take for its own folder's
            failure = storage_error(e, trial_cfg["storage"])
            if failure is None or failure is e:
                raise
            raise failure from e

    return report


def _open_trial(trial_cfg: Mapping[str, Any]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=trial_cfg["study_name"], storage=open_storage(trial_cfg["storage"]),
                              pruner=make_pruner(trial_cfg.get("pruner")))
    return reopen_trial(study, int(trial_cfg["trial_id"]))
