"""`python launch.py -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 'lora.r=choice(4,8,16)' ...`

An Optuna search on the ask-and-tell API: `n_jobs` runs in flight in local worker processes (or as
SLURM jobs with hydra/launcher=slurm: the launcher's settings, this sweeper's loop), a new
trial asked as soon as any run finishes. The study lives in a storage (by default a sqlite file in
the results store), so a killed sweep started again with the same command continues it: n_trials
counts finished trials in total, and a finished run (same run key) is never trained twice.

optuna is imported only when a sweep starts: Hydra imports this module at every launch to find plugins.
"""
from __future__ import annotations

import sys
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lorasweep.sweep_jobs import JobConfigs

if TYPE_CHECKING:
    import optuna

ABANDONED = "abandoned"  # a trial left running by a driver that died; its params are asked again


class _Job:
    """One run in flight, and the trials waiting on it (two trials may ask for the same run key).

    A plain class, not a dataclass: Hydra's plugin scan executes this module outside sys.modules,
    where @dataclass cannot resolve string annotations."""

    def __init__(self, run_key: str, trials: list[tuple["optuna.trial.Trial", str]]) -> None:
        self.run_key, self.trials = run_key, trials  # trials: (trial, its progress label)


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any = "tpe", seed: int | None = None, direction: Any = "maximize",
                 objectives: Sequence[str] | None = None, study_name: str | None = None,
                 storage: str | None = None, n_trials: int = 20, n_jobs: int = 1, pruner: Any = "none",
                 params: Any = None, threads: int | None = None) -> None:
        self.sampler_spec, self.seed, self.pruner_spec = _plain(sampler), seed, _plain(pruner)
        self.objectives = [str(o) for o in (objectives or ["objective.value"])]
        self.direction, self.study_name, self.storage = _plain(direction), study_name, storage
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be at least 1")
        self.n_trials, self.n_jobs, self.threads = int(n_trials), int(n_jobs), threads
        self.params = dict(_plain(params) or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # runs go to lorasweep's executor directly (results, not return values): no Hydra launcher
        self.config, self.hydra_context = config, hydra_context
        self.configs = JobConfigs(hydra_context.config_loader, config)  # trials differ in values: reused

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from . import _space

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        params_conf = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        self.space, self.fixed = _space.parse_space(params_conf)
        if not self.space:
            raise ValueError("the Optuna sweeper found no search space: give one, e.g. 'lora.r=choice(4,8,16)' "
                             "or hydra.sweeper.params")
        directions = _space.directions_for(self.direction, self.objectives)
        sampler = _space.make_sampler(self.sampler_spec, self.seed, self.space)
        self.grid = _space.grid_cells(self.space) if _space.is_grid(self.sampler_spec) else None
        if self.grid is not None:  # a grid has so many cells, no more
            self.n_trials = min(self.n_trials, len(self.grid))
        self.study = optuna.create_study(storage=self._storage_url(), sampler=sampler, directions=directions,
                                         study_name=self.study_name or _space.default_study_name(
                                             params_conf, self.objectives), load_if_exists=True)
        if [d.name.lower() for d in self.study.directions] != directions:
            raise ValueError(f"study {self.study.study_name!r} exists with directions "
                             f"{[d.name.lower() for d in self.study.directions]}, not {directions}: "
                             f"set hydra.sweeper.study_name to start a new one")
        _say(f"optuna study {self.study.study_name!r} in {self._storage_url()}: {self.n_trials} trials, "
             f"{self.n_jobs} at a time, sampler {type(sampler).__name__}")
        self.stats = {"trained": 0, "reused": 0}
        self._recover_abandoned()
        self._loop()
        self._summary()

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        from lorasweep.executor import make_executor

        finished = len(self._counted_trials())
        inflight: dict[Future, _Job] = {}
        by_key: dict[str, Future] = {}
        # hydra/launcher=slurm: the trials' runs go to SLURM (n_jobs in flight), else local workers
        assert self.config is not None
        launcher = OmegaConf.select(self.config, "hydra.launcher")
        launcher = OmegaConf.to_container(launcher, resolve=True) if launcher is not None else None
        executor = make_executor(launcher, self.n_jobs, self.threads)
        try:
            while True:
                while len(inflight) < self.n_jobs and finished + _pending(inflight) < self.n_trials:
                    finished += self._start(finished + _pending(inflight) + 1, executor, inflight, by_key)
                if not inflight:
                    return
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for future in done:
                    job = inflight.pop(future)
                    by_key.pop(job.run_key, None)
                    for trial, label in job.trials:
                        self._tell_outcome(trial, label, future)
                        finished += 1
        finally:
            # a Ctrl-C leaves its trials RUNNING; the next start of this sweep recovers them
            executor.shutdown(cancel=bool(inflight))

    def _start(self, ordinal: int, executor, inflight: dict[Future, _Job], by_key: dict[str, Future]) -> int:
        """Ask one trial and start it; returns 1 when it was told at once (over budget, reused, invalid)."""
        from optuna.trial import TrialState

        from lorasweep import results
        from lorasweep.planning import plan_run

        if self.grid is not None:  # the next cell no finished or running trial holds
            taken = {_cell(t.params) for t in self._counted_trials()}
            taken |= {_cell(t.params) for job in inflight.values() for t, _ in job.trials}
            self.study.enqueue_trial(next(c for c in self.grid if _cell(c) not in taken))
        trial = self.study.ask(fixed_distributions=self.space)
        label = f"trial {ordinal}/{self.n_trials} {_params(trial)}"
        try:
            cfg = self._compose(trial.params)
            plan = plan_run(cfg)
        except Exception as e:  # a bad cell of the space (e.g. a code the model lacks): fail it, go on
            return self._tell(trial, TrialState.FAIL, label, f"invalid: {type(e).__name__}: {e}",
                              status="failed", reason=f"{type(e).__name__}: {e}")
        key, folder = plan.spec.run_key, results.run_dir(cfg.get("results_dir", "results"), plan.spec.slug,
                                                         plan.spec.run_key)
        trial.set_user_attr("run_key", key)
        trial.set_user_attr("result_dir", str(folder))
        if plan.over_budget:
            from lorasweep.run import execute

            execute(plan, Path(cfg.get("results_dir", "results")))  # a skipped_budget result; reads no weight
            return self._tell(trial, TrialState.PRUNED, label,
                              f"over budget ({plan.predicted:,} > {plan.budget:,})", status="skipped_budget",
                              reason=f"{plan.predicted:,} trainable parameters exceed the budget of {plan.budget:,}")
        stored = results.read_result(folder)
        if stored and stored.get("status") in ("done", "pruned"):
            self.stats["reused"] += 1
            return self._tell_result(trial, label, stored, suffix=" (reused stored result)")
        if key in by_key:  # the same run is already training for another trial: wait for it
            inflight[by_key[key]].trials.append((trial, label))
            _say(f"{label}: same run as one in flight ({key}), waiting for it")
            return 0
        if len(self.objectives) == 1:  # Optuna prunes single-objective studies only
            cfg["trial"] = {"storage": self._storage_url(), "study_name": self.study.study_name,
                            "trial_id": trial._trial_id, "number": trial.number, "pruner": self.pruner_spec,
                            "metric": "accuracy"}
        future = executor.submit_many([(cfg, folder)])[0]
        inflight[future] = _Job(key, [(trial, label)])
        by_key[key] = future
        self.stats["trained"] += 1
        note = getattr(future, "note", "")
        _say(f"{label}: {executor.verb} (job {trial.number}{f', {note}' if note else ''})")
        return 0

    # -- telling the study ------------------------------------------------------------------------

    def _tell_outcome(self, trial, label: str, future: Future) -> None:
        from optuna.trial import TrialState

        error = future.exception()
        if error is not None:
            reason = f"{type(error).__name__}: {error}"
            self._tell(trial, TrialState.FAIL, label, f"failed: {reason}", status="failed", reason=reason)
        else:
            self._tell_result(trial, label, future.result())

    def _tell_result(self, trial, label: str, result: dict, suffix: str = "") -> int:
        from optuna.trial import TrialState

        status = result.get("status")
        if status == "done":
            values = [_field(result, name) for name in self.objectives]
            missing = [n for n, v in zip(self.objectives, values) if not isinstance(v, (int, float))]
            if missing:
                return self._tell(trial, TrialState.FAIL, label, f"no objective {missing} in the result",
                                  status="failed", reason=f"result has no number at {missing}")
            shown = " ".join(f"{v:.4g}" for v in values)
            return self._tell(trial, TrialState.COMPLETE, label, f"done {shown}{suffix}", values=values,
                              status="done")
        if status == "pruned":
            step = (result.get("curve") or [{}])[-1].get("step", "?")
            return self._tell(trial, TrialState.PRUNED, label, f"pruned at step {step}{suffix}", status="pruned")
        if status == "skipped_budget":
            return self._tell(trial, TrialState.PRUNED, label, "over budget", status="skipped_budget",
                              reason=result.get("reason", ""))
        reason = result.get("reason") or f"status {status!r}"
        return self._tell(trial, TrialState.FAIL, label, f"failed: {reason}", status="failed", reason=reason)

    def _tell(self, trial, state, label: str, message: str, values: list[float] | None = None,
              **attrs: Any) -> int:
        for k, v in attrs.items():
            self.study._storage.set_trial_user_attr(trial._trial_id, k, v)
        self.study.tell(trial, values, state=state)
        _say(f"{label}: {message}")
        return 1

    # -- restart ----------------------------------------------------------------------------------

    def _counted_trials(self) -> list:
        from optuna.trial import TrialState

        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and t.user_attrs.get("status") != ABANDONED)]

    def _recover_abandoned(self) -> None:
        """Trials left RUNNING by a driver that died: tell a result its run left on disk, else fail
        them (not counted) and enqueue their params so that the sampler's choice is not lost.

        This assumes one driver per study: a second driver sharing it would see our runs as abandoned."""
        from optuna.trial import TrialState

        from lorasweep import results
        from lorasweep.planning import plan_run

        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna_trial(self.study, frozen)
            label = f"trial #{frozen.number} (left running) {_params(frozen)}"
            complete = set(frozen.params) == set(self.space)
            stored = None
            if complete:
                try:
                    plan = plan_run(cfg := self._compose(frozen.params))
                    stored = results.read_result(results.run_dir(cfg.get("results_dir", "results"),
                                                                 plan.spec.slug, plan.spec.run_key))
                except Exception:  # the space changed since: nothing to recover
                    complete = False
            if stored and stored.get("status") in ("done", "pruned"):
                self._tell_result(trial, label, stored, suffix=" (recovered from disk)")
                continue
            self._tell(trial, TrialState.FAIL, label, "abandoned by a stopped sweep, asked again"
                       if complete else "abandoned by a stopped sweep", status=ABANDONED)
            # a grid walks to the cell again by itself; other samplers get the params back
            if complete and self.grid is None:
                self.study.enqueue_trial(dict(frozen.params))

    # -- configs and paths ------------------------------------------------------------------------

    def _compose(self, params: dict[str, Any]) -> dict[str, Any]:
        from . import _space

        assert self.config is not None and self.hydra_context is not None
        overrides = [f"{k}={v}" for k, v in self.fixed.items()]
        overrides += [f"{k}={_space.format_value(v)}" for k, v in params.items()]
        return self.configs(overrides)[1]

    def _storage_url(self) -> str:
        if self.storage:
            return str(self.storage)
        assert self.config is not None
        store = Path(str(OmegaConf.select(self.config, "results_dir", default="results"))).resolve()
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'optuna.db'}"

    # -- the end ----------------------------------------------------------------------------------

    def _summary(self) -> None:
        from optuna.trial import TrialState

        counted = self._counted_trials()
        by = {s: sum(1 for t in counted if t.user_attrs.get("status") == s)
              for s in ("done", "pruned", "failed", "skipped_budget")}
        complete = [t for t in counted if t.state == TrialState.COMPLETE]
        _say(f"sweep: {len(counted)}/{self.n_trials} trials finished in study {self.study.study_name!r}: "
             f"{len(complete)} complete, {by['pruned']} pruned, {by['failed']} failed, "
             f"{by['skipped_budget']} over budget; this time {self.stats['trained']} trained, "
             f"{self.stats['reused']} reused" + ("; nothing left to run" if not self.stats["trained"] else ""))
        if not complete:
            return
        if len(self.objectives) == 1:
            best = self.study.best_trial
            _say(f"best {self.objectives[0]} = {best.value:.4g} (trial #{best.number}): {_params(best)}")
        else:
            _say(f"Pareto front ({', '.join(self.objectives)}):")
            for t in sorted(self.study.best_trials, key=lambda t: t.values):
                _say(f"  {' '.join(f'{v:.4g}' for v in t.values)}  trial #{t.number}: {_params(t)}")


def optuna_trial(study, frozen) -> "optuna.trial.Trial":
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)


def _cell(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def _pending(inflight: dict[Future, _Job]) -> int:
    return sum(len(job.trials) for job in inflight.values())


def _field(result: dict, dotted: str) -> Any:
    """result["metrics"]["test"]["accuracy"] for "metrics.test.accuracy"; None when absent."""
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _params(trial) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
