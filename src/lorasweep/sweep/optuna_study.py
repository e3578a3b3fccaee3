"""The Optuna search behind `hydra/sweeper=optuna`: an ask-and-tell loop over lorasweep's executors.

`n_jobs` runs are in flight (local worker processes, or SLURM jobs under hydra/launcher=slurm) and a
new trial is asked as soon as any finishes. Each trial's run is triaged like a grid's (invalid, done,
over budget, train; a run another process trains now is waited for and its result told). The study lives in a storage (by default a file in the results store: sqlite
locally, a journal file under hydra/launcher=slurm; run/study_storage.py), so a killed sweep started again with the same command continues it: n_trials counts finished
trials in total, and a finished run (same run key) is never trained twice.

A run that diverged (its training loss became NaN or infinite) is told to the study as FAIL, with
user attributes status=diverged and its reason: the sampler learns nothing false from it (no 0% value),
it counts towards n_trials, and its stored result stands for its run key like a done one.

A trial whose run fails (an exception, a killed worker) is run again up to hydra.launcher.retries
times before the study is told it failed, as in a grid sweep; a diverged one never is. As a grid
with a failed run, a sweep that told a trial failed (its run failed, or its config was invalid; not
a diverged one) exits 1 at its end.

The store's faults as in a grid sweep: a results_dir that cannot be written stops it before the
study opens (exit 2); a trial that fails because the store is full (or read-only) stops asking for
more (exit 1, no traceback); a stored result.json that cannot be read is said and trained again.

One driver drives a study at a time: it claims the study (run/claims.py, a claim in
<results_dir>/.optuna/) before it recovers or asks anything, and a second driver of the same study
(the same command in another terminal) is refused in one line naming the first (exit 1), instead
of taking the first's running trials for abandoned ones and failing them under it.

What hydra-optuna-sweeper's users rely on: hydra.sweeper.max_failure_rate stops asking once too many
trials failed (failure_rate.py; exit 1), hydra.sweeper.custom_search_space adds params to each trial
(custom_space.py), and every end of the sweep writes optimization_results.yaml (optuna_results.py).
"""
from __future__ import annotations

from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from ..compat import reopen_trial, trial_id
from ..console import say
from ..errors import ConfigError, RunClaimedError, StoreError, SweepExit, UnwritableStoreError, cause
from ..executors.factory import check_retries, executor_for, local_placement, runs_on_slurm
from ..run.claims import Claim
from ..run.pruning import make_pruner
from ..run.store import FINISHED as FINISHED_RESULTS, check_writable, storage_error
from ..run.study_storage import open_storage
from . import optuna_space as space_of
from .custom_space import CustomSearchSpaceError, extend_trial, load_custom_search_space
from .failure_rate import DEFAULT as DEFAULT_FAILURE_RATE, FailureRate, check_max_failure_rate
from .interrupts import interrupt_on_signals
from .optuna_results import result_field, say_summary, write_optimization_results
from .optuna_settings import OptunaSettings, driver_folder, storage_spec
from .driver import FINISHED, HERE, LANDED, RETRYING, WAITING, Driver, Outcome
from .packs import make_packs, optuna_pack_size
from .triage import triage

ABANDONED = "abandoned"  # a trial left running by a driver that died, or whose run the store refused: asked again
REUSABLE = (*FINISHED_RESULTS, "pruned")  # a stored result of these stands for its run key's trial
# the driver's claim on its study, in a store read-only for a moment as the driver ends: tried again this
# long, since nobody else deletes it (a run's claim kept so is deleted by the driver, sweep/driver.py)
STUDY_RELEASE_WAIT_S = 5.0


@dataclass
class TrialRun:
    """One run the study trains, and the trials waiting on it (two trials may ask for the same run key)."""

    run_key: str
    trials: list[tuple[optuna.trial.Trial, str]]  # (trial, its progress label)
    cfg: dict
    folder: Path
    before: dict | None  # its stored result when it was triaged (a failed one from an earlier sweep, say)
    attempt: int = 1     # 2 and more: retried (hydra.launcher.retries)
    started: float = 0.0
    reports_to: dict | None = None  # its first trial, whose pruner its evaluations go to (run/pruning)


@dataclass(frozen=True)
class Search:
    """The sweeper's settings that shape the search, checked (sweep/optuna_plan checks them the same way)."""

    max_failure_rate: float
    extender: Any          # hydra.sweeper.custom_search_space's function, or None
    directions: list[str]
    sampler: optuna.samplers.BaseSampler


def check_search(settings: OptunaSettings, space: dict) -> Search:
    """max_failure_rate, custom_search_space, directions, the sampler on `space` and the pruner, each
    refused by a ConfigError that names it; nothing is written."""
    search = Search(check_max_failure_rate(settings.max_failure_rate),
                    load_custom_search_space(settings.custom_search_space),
                    space_of.directions_for(settings.direction, settings.objectives),
                    space_of.make_sampler(settings.sampler, settings.seed, space))
    make_pruner(settings.pruner)  # made again by each trial's run (run/pruning): checked here, once
    return search


class OptunaSweep:
    """One sweep: `OptunaSweep(settings, compose, launcher, results_dir).run(arguments)`.

    `compose(overrides)` gives a trial's plain config; `launcher` is the hydra.launcher config (it
    picks local workers or SLURM jobs); `results_dir` holds the default storage; `sweep_config` is
    the `cfg` that hydra.sweeper.custom_search_space gets; `sweep_dir` receives optimization_results.yaml."""

    def __init__(self, settings: OptunaSettings, compose: Callable[[list[str]], dict],
                 launcher: dict | None, results_dir: Path, sweep_config: Any = None,
                 sweep_dir: Path | None = None) -> None:
        self.settings, self.compose, self.launcher, self.results_dir = settings, compose, launcher, results_dir
        self.sweep_config, self.sweep_dir = sweep_config, sweep_dir
        self.stats = {"trained": 0, "reused": 0}
        self.retries = 0  # hydra.launcher.retries, checked when the sweep starts
        self.gpus: list[str] | None = None  # each local worker's CUDA_VISIBLE_DEVICES, idem
        self.failures = FailureRate(DEFAULT_FAILURE_RATE)  # hydra.sweeper.max_failure_rate, idem
        self.extender = None  # hydra.sweeper.custom_search_space, idem
        self.stop_line: str | None = None  # why no more trials are asked (said once): exit 1
        self.pack: int | None = None  # hydra.launcher.pack: trials a worker trains at once (sweep/packs)
        self.ready: list[TrialRun] = []  # with packs: trials asked and triaged, to be sent as packs

    def _check(self, params_conf: list[str]) -> optuna.samplers.BaseSampler:
        """The search space, the launcher's and sweeper's settings, the store and the study, checked
        and set; returns the sampler. ConfigError (or UnwritableStoreError) names what is wrong."""
        self.space, self.fixed = space_of.parse_space(params_conf)
        self.retries = check_retries((self.launcher or {}).get("retries", 0))
        self.settings.n_jobs, self.gpus = local_placement(self.launcher, self.settings.n_jobs, "hydra.sweeper.n_jobs")
        self.pack = optuna_pack_size((self.launcher or {}).get("pack"))
        search = check_search(self.settings, self.space)
        self.failures, self.extender = FailureRate(search.max_failure_rate), search.extender
        directions, sampler = search.directions, search.sampler
        check_writable(self.results_dir)
        self.grid = space_of.grid_cells(self.space) if space_of.is_grid(self.settings.sampler) else None
        self.n_trials = min(self.settings.n_trials, len(self.grid)) if self.grid is not None else self.settings.n_trials
        self.storage = storage_spec(self.settings.storage, self.results_dir, runs_on_slurm(self.launcher))
        try:
            self.study = optuna.create_study(storage=open_storage(self.storage), sampler=sampler,
                                             directions=directions, load_if_exists=True,
                                             study_name=self.settings.study_name or space_of.default_study_name(
                                                 params_conf, self.settings.objectives))
        except (OSError, StoreError, optuna.exceptions.StorageInternalError) as e:  # a read-only or full storage
            failure = storage_error(e, self.storage)
            if failure is None:
                raise
            named = "hydra.sweeper.storage=" if self.settings.storage else "the study's storage "
            raise ConfigError(f"{named}{self.storage} is not writable: {failure.cause}") from None
        if [d.name.lower() for d in self.study.directions] != directions:
            raise ConfigError(f"study {self.study.study_name!r} exists with directions "
                              f"{[d.name.lower() for d in self.study.directions]}, not {directions}: "
                              f"set hydra.sweeper.study_name to start a new one")
        return sampler

    def run(self, arguments: list[str]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        params_conf = [f"{k}={v}" for k, v in self.settings.params.items()] + list(arguments)
        try:  # every setting, before anything trains (the study's default storage lives in the store)
            sampler = self._check(params_conf)
        except (UnwritableStoreError, ConfigError) as e:
            say(f"sweep: {e}; nothing was trained")
            raise SweepExit(2) from None
        with ExitStack() as driving:
            try:  # before anything is recovered or asked: the study's RUNNING trials are then ours or abandoned
                driving.enter_context(Claim(driver_folder(self.results_dir, self.storage, self.study.study_name),
                                             release_wait_s=STUDY_RELEASE_WAIT_S))
            except RunClaimedError as e:
                say(f"sweep: optuna study {self.study.study_name!r} is being driven by {e.holder}: the same "
                    f"command goes on there; let it end, or name another study (hydra.sweeper.study_name); "
                    f"nothing was started here")
                raise SweepExit(1) from None
            say(f"optuna study {self.study.study_name!r} in {self.storage}: {self.n_trials} trials, "
                f"{self.settings.n_jobs} at a time, sampler {type(sampler).__name__}")
            try:
                self._recover_abandoned()
                interrupt_on_signals()  # kill, a closed terminal: handled as Ctrl-C
                self._loop()  # interrupted: self.interrupted says it, SweepExit(130)
            # a journal file's OSError, SQLite's error inside Optuna's; a trial not told stays RUNNING: asked again
            except (OSError, StoreError, optuna.exceptions.StorageInternalError) as e:
                failure = storage_error(e, self.storage)
                if failure is None:
                    raise
                self.stop_line = (f"sweep: stopped: the study's storage refused a write: {failure}; "
                                  f"{self._in_flight()} when the same command runs again, once it can be written")
                say(self.stop_line)  # said even after another stop: the driver ends here (exit 1)
        self._summary()
        write_optimization_results(self.study, self.sweep_dir)
        if self.halted or self.failures.runs_failed:  # as a grid with a failed run: each said in its line
            raise SweepExit(1)

    # -- the driver's source (sweep/driver.Source) -------------------------------------------------

    def _loop(self) -> None:
        self.asked = len(self._counted_trials())  # trials towards n_trials: finished, and those asked since
        self.by_key: dict[str, TrialRun] = {}  # run key -> its run in flight (or ready, or to train here)
        executor = executor_for(self.launcher, self.settings.n_jobs, self.settings.threads, self.gpus)
        # a Ctrl-C leaves its trials RUNNING; the next start of this sweep recovers them
        Driver(executor, self, self.retries).drive()

    @property
    def halted(self) -> bool:
        return self.stop_line is not None

    def next_units(self, driver: Driver, room: int) -> list[list[TrialRun]]:
        """Trials asked while the study wants more; those that train go alone, or with packs as soon
        as K are ready (a last, smaller pack when no more are asked)."""
        while not self.halted and self.asked < self.n_trials and len(self.ready) < (self.pack or 1):
            self._start(driver)
        units = make_packs(self.ready, lambda run: run.cfg, self.pack)
        self.ready = []
        return units

    def sent(self, unit: list[TrialRun], future: Future, verb: str, again: bool) -> None:
        if again:  # a retry (said when it failed), or a resend to the job that holds it
            return
        note = getattr(future, "note", "")
        for run in unit:
            trial, label = run.trials[0]
            packed = f"in a pack of {len(unit)}, " if len(unit) > 1 else ""
            say(f"{label}: {verb} ({packed}job {trial.number}{f', {note}' if note else ''})")

    def record(self, run: TrialRun, outcome: Outcome) -> None:
        """Tell each trial waiting on `run` what became of it."""
        if outcome.kind == RETRYING:
            say(f"{run.trials[0][1]}: failed: {cause(outcome.future.exception())}; retrying "
                f"(attempt {run.attempt} of {self.retries + 1})")
            return
        if outcome.kind in (FINISHED, WAITING):
            self.by_key.pop(run.run_key, None)
        for trial, label in run.trials:
            if outcome.kind == FINISHED:
                self._tell_outcome(trial, label, outcome.future)
            elif outcome.kind == WAITING:  # claimed by another process after our triage
                say(f"{label}: being trained by {outcome.holder}; waiting for its result")
            elif outcome.kind == LANDED and outcome.verdict in FINISHED_RESULTS:
                self._tell_result(trial, label, outcome.stored, suffix=" (trained elsewhere)")
            elif outcome.kind == LANDED:  # failed there
                reason = outcome.stored.get("reason", "")
                self._tell(trial, TrialState.FAIL, label, f"failed elsewhere: {reason}", status="failed",
                           reason=reason)
            elif outcome.kind == HERE:
                say(f"{label}: its trainer stopped without a result; training it here")
        if outcome.kind == HERE:
            self._train(run)

    def not_started(self, error: StoreError, runs: list[TrialRun]) -> None:
        for run in runs:  # left RUNNING: the next start asks them again
            for _, label in run.trials:
                say(f"{label}: not started ({error.cause}); asked again when the same command runs again")

    def task_done(self, driver: Driver) -> None:
        """Nothing to say: each trial's line says it."""

    def interrupted(self, in_flight: list[str]) -> None:
        say(f"sweep interrupted: {len(self._counted_trials())} of {self.n_trials} trials told and kept in "
            f"the study; {self._in_flight()} when the same command runs again")
        write_optimization_results(self.study, self.sweep_dir)

    def _in_flight(self) -> str:
        """What became of the trials in flight when the driver stopped short."""
        return ("the trials in flight go on as SLURM jobs and are collected" if runs_on_slurm(self.launcher)
                else "the trials in flight were stopped and are asked again")

    def _start(self, driver: Driver) -> None:
        """Ask one trial: told at once (over budget, reused, invalid), joined to the same run in
        flight, waited for (another process trains its run), or made ready to train."""
        self.asked += 1
        if self.grid is not None:  # the next cell no finished or running (asked, not told) trial holds
            taken = {self._cell(t.params) for t in (*self._counted_trials(), *self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)))}
            self.study.enqueue_trial(next(c for c in self.grid if self._cell(c) not in taken))
        trial = self.study.ask(fixed_distributions=self.space)
        refused = self._extend(trial)
        label = f"trial {self.asked}/{self.n_trials} {space_of.params_text(trial)}"
        if refused is not None:  # the user's function: every later trial would meet it too
            self._tell(trial, TrialState.FAIL, label, f"failed: {refused}", status="failed", reason=refused)
            self._halt(f"sweep: stopped: {refused}; no new trials are started; fix it and run the same command "
                       f"again to continue the study")
            return
        try:
            cfg = self._compose(trial.params)
            decision = triage(cfg)
            mistake = decision.mistake
        except Exception as e:  # a bad cell of the space (e.g. a value Hydra rejects): fail it, go on
            mistake = e
        if mistake is not None:
            error = f"{type(mistake).__name__}: {mistake}"
            self._tell(trial, TrialState.FAIL, label, f"invalid: {error}", status="failed", reason=error)
            return
        plan, folder = decision.plan, decision.folder
        key = plan.spec.run_key
        trial.set_user_attr("run_key", key)
        trial.set_user_attr("result_dir", str(folder))
        if decision.verdict == "over_budget":  # recorded as skipped_budget; nothing launched
            self._tell(trial, TrialState.PRUNED, label, f"over budget ({plan.predicted:,} > {plan.budget:,})",
                       status="skipped_budget", reason=decision.stored["reason"])
            return
        if decision.stored and decision.stored.get("status") in REUSABLE:
            self.stats["reused"] += 1
            self._tell_result(trial, label, decision.stored, suffix=" (reused stored result)")
            return
        if decision.unreadable and key not in self.by_key:
            say(f"{label}: {decision.unreadable}, training it again")
        if key in self.by_key:  # the same run is already training (or ready to) for another trial: wait for it
            self.by_key[key].trials.append((trial, label))
            say(f"{label}: same run as one in flight ({key}), waiting for it")
            return
        run = TrialRun(key, [(trial, label)], cfg, folder, decision.stored)
        if decision.verdict == "claimed" and driver.await_claim(run):  # another process trains it now
            say(f"{label}: being trained by {decision.holder}; waiting for its result")
            return
        self._train(run)
        self.ready.append(run)

    def _extend(self, trial) -> str | None:
        """hydra.sweeper.custom_search_space's params for `trial` (overrides like the others); the
        function's mistake, if it made one."""
        if self.extender is None:
            return None
        try:
            extend_trial(self.extender, self.settings.custom_search_space, self.sweep_config, trial, self.fixed)
        except CustomSearchSpaceError as e:
            return str(e)
        return None

    def _train(self, run: TrialRun) -> None:
        """The run trains here, for its first trial, which reports to the pruner."""
        trial = run.trials[0][0]
        if len(self.settings.objectives) == 1:  # Optuna prunes single-objective studies only
            run.reports_to = {"storage": self.storage, "study_name": self.study.study_name,
                              "trial_id": trial_id(trial), "number": trial.number, "pruner": self.settings.pruner,
                              "metric": "accuracy"}
        self.by_key[run.run_key] = run
        self.stats["trained"] += 1

    # -- telling the study ------------------------------------------------------------------------

    def _tell_outcome(self, trial, label: str, future: Future) -> None:
        error = future.exception()
        if isinstance(error, StoreError) and error.whole_store:  # the store's fault: the run is asked again
            self._ask_again(trial, label, f"not finished: {error}; asked again when the same command runs again")
            self._halt(f"sweep: stopped: {error.cause}; no more trials are started (each would fail the same "
                       f"way); {'free space' if error.no_space else 'fix the results store'} and run the same "
                       f"command again to continue the study")
        elif isinstance(error, StoreError):  # one line with the path and the cause
            self._tell(trial, TrialState.FAIL, label, f"failed: {error}", status="failed", reason=str(error))
        elif error is not None:
            reason = cause(error)
            self._tell(trial, TrialState.FAIL, label, f"failed: {reason}", status="failed", reason=reason)
        else:
            self._tell_result(trial, label, future.result())

    def _tell_result(self, trial, label: str, result: dict, suffix: str = "") -> None:
        status = result.get("status")
        if status == "done":
            values = [result_field(result, name) for name in self.settings.objectives]
            missing = [n for n, v in zip(self.settings.objectives, values) if not isinstance(v, (int, float))]
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
        if status == "diverged":
            reason = result.get("reason", "")
            return self._tell(trial, TrialState.FAIL, label, f"diverged: {reason}{suffix}", status="diverged",
                              reason=reason)
        reason = result.get("reason") or f"status {status!r}"
        return self._tell(trial, TrialState.FAIL, label, f"failed: {reason}", status="failed", reason=reason)

    def _tell(self, trial, state, label: str, message: str, values: list[float] | None = None,
              **attrs: Any) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.study.tell(trial, values, state=state)
        say(f"{label}: {message}")
        if attrs.get("status") != ABANDONED:
            self.failures.count(state, attrs.get("status"))
            if self.failures.exceeded:
                self._halt(self.failures.stop_line())

    def _ask_again(self, trial, label: str, message: str) -> None:
        """Fail `trial` uncounted (ABANDONED): a later trial asks its params again. A grid walks to its
        cell by itself; other samplers get the params back, so that the sampler's choice is not lost."""
        params = dict(trial.params)
        self._tell(trial, TrialState.FAIL, label, message, status=ABANDONED)
        if self.grid is None:
            self.study.enqueue_trial(params)

    def _halt(self, line: str) -> None:
        """Ask no more trials (those in flight finish), say why once; the sweep then exits 1."""
        if self.stop_line is None:
            self.stop_line = line
            say(line)

    # -- restart ----------------------------------------------------------------------------------

    def _counted_trials(self) -> list:
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and t.user_attrs.get("status") != ABANDONED)]

    def _recover_abandoned(self) -> None:
        """Trials left RUNNING by a driver that died: tell a result its run left on disk, else fail
        them (not counted) and enqueue their params so that the sampler's choice is not lost.

        Called holding the study's driver claim (run): no live driver has RUNNING trials in it."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = reopen_trial(self.study, trial_id(frozen))
            label = f"trial #{frozen.number} (left running) {space_of.params_text(frozen)}"
            complete = set(self.space) <= set(frozen.params)  # custom_search_space may have added more
            stored = None
            if complete:
                try:
                    stored = triage(self._compose(frozen.params), record=False).stored
                except Exception:  # the space changed since: nothing to recover
                    complete = False
            if stored and stored.get("status") in REUSABLE:
                self._tell_result(trial, label, stored, suffix=" (recovered from disk)")
                continue
            if complete:
                self._ask_again(trial, label, "abandoned by a stopped sweep, asked again")
            else:
                self._tell(trial, TrialState.FAIL, label, "abandoned by a stopped sweep", status=ABANDONED)

    # -- configs and paths ------------------------------------------------------------------------

    def _cell(self, params: dict[str, Any]) -> tuple:
        """A grid cell: the space's params only (custom_search_space may add others)."""
        return tuple(sorted((k, str(params.get(k))) for k in self.space))

    def _compose(self, params: dict[str, Any]) -> dict[str, Any]:
        overrides = [f"{k}={v}" for k, v in self.fixed.items()]
        overrides += [f"{k}={space_of.format_value(v)}" for k, v in params.items()]
        return self.compose(overrides)

    # -- the end ----------------------------------------------------------------------------------

    def _summary(self) -> None:
        say_summary(self.study, self._counted_trials(), self.n_trials, self.settings.objectives, self.stats)

