"""Coming from hydra-optuna-sweeper: what its users rely on, in lorasweep's Optuna sweeper.

optimization_results.yaml in the sweep folder, hydra.sweeper.max_failure_rate, hydra.sweeper.
custom_search_space, and the sampler as a config group (hydra/sweeper/sampler=tpe). Real multiruns of
tiny models as a user launches them, and the pieces in-process where a launch would add nothing.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import ROOT, TINY_TOPICS, launch, per_run
from lorasweep.errors import ConfigError
from lorasweep.sweep.custom_space import CustomSearchSpaceError, extend_trial, load_custom_search_space
from lorasweep.sweep.failure_rate import check_max_failure_rate
from lorasweep.sweep.optuna_space import is_grid, make_sampler

SWEEPER = ["-m", "hydra/sweeper=optuna"]
TINY_2 = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + ["train.max_steps=2"]


def _storage(results: Path) -> str:
    return f"sqlite:///{results.resolve() / 'optuna.db'}"


def _only_study(results: Path) -> optuna.Study:
    [name] = optuna.get_all_study_names(storage=_storage(results))
    return optuna.load_study(study_name=name, storage=_storage(results))


def _result(trial) -> dict:
    return json.loads((Path(trial.user_attrs["result_dir"]) / "result.json").read_text())


def _optimization_results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


# -- optimization_results.yaml ------------------------------------------------------------------------

def test_optimization_results_hold_the_best_trial_also_of_a_continued_study(tmp_path):
    results = tmp_path / "results"
    # fewest trainable parameters wins: r=2 beats r=4, whatever the tiny runs' accuracy
    args = [*SWEEPER, "hydra.sweeper.sampler=grid", "lora.r=choice(4,2)", "hydra.sweeper.objectives=[params.trainable]",
            "hydra.sweeper.direction=minimize", *TINY_2, f"results_dir={results}"]
    first = launch([*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'first'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    [r4] = _only_study(results).trials
    assert _optimization_results(tmp_path / "first") == {
        "name": "optuna", "best_params": {"lora.r": 4}, "best_value": _result(r4)["params"]["trainable"]}
    assert f"optimization results: {tmp_path / 'first' / 'optimization_results.yaml'}" in first.stderr

    # the same command with more trials continues the study; its file is the study's best over both commands
    second = launch([*args, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'second'}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    study = _only_study(results)
    assert [t.params["lora.r"] for t in study.trials] == [4, 2] and "this time 1 trained" in second.stderr
    best = study.best_trial
    assert best.params == {"lora.r": 2} and best.value == _result(best)["params"]["trainable"] < r4.value
    assert _optimization_results(tmp_path / "second") == {
        "name": "optuna", "best_params": {"lora.r": 2}, "best_value": best.value}
    assert _optimization_results(tmp_path / "first")["best_params"] == {"lora.r": 4}  # each command its own folder
    assert not list((tmp_path / "second").glob(".optimization_results-*"))  # no temp file left by the atomic write


# -- max_failure_rate ---------------------------------------------------------------------------------

def test_max_failure_rate_stops_asking_once_more_trials_failed(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    study = optuna.create_study(storage=_storage(results), study_name="rate", direction="maximize")
    for lr in (3e-2, 1e4, 1e4):  # done; diverged (1 of 2: not above 0.5); the same run again (2 of 3: above)
        study.enqueue_trial({"train.lr": lr})
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=5", "hydra.sweeper.study_name=rate",
                  "hydra.sweeper.max_failure_rate=0.5", "train.lr=choice(3e-2,1e4)", *TINY_TOPICS,
                  f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "sweep: stopped: 2 of 3 trials failed, 2 of them diverged (67%), more than " \
           "hydra.sweeper.max_failure_rate=0.5 allows; no new trials are started, those in flight finish" \
           in out.stderr.splitlines()
    trials = optuna.load_study(study_name="rate", storage=_storage(results)).trials
    assert [(t.params["train.lr"], t.state, t.user_attrs["status"]) for t in trials] == [
        (3e-2, TrialState.COMPLETE, "done"), (1e4, TrialState.FAIL, "diverged"), (1e4, TrialState.FAIL, "diverged")]
    assert "Traceback" not in out.stderr
    # stopped early, it still says what it found
    assert _optimization_results(tmp_path / "sweep") == {
        "name": "optuna", "best_params": {"train.lr": 3e-2}, "best_value": _result(trials[0])["objective"]["value"]}


def test_max_failure_rate_0_stops_at_the_first_failure_and_lets_the_trial_in_flight_finish(tmp_path, trainings,
                                                                                           monkeypatch):
    # hydra-optuna-sweeper's default. The first training of the two in flight fails (tests/hooks: LORASWEEP_FAIL_ONCE)
    monkeypatch.setenv("LORASWEEP_FAIL_ONCE", str(tmp_path / "failed-once"))
    results = tmp_path / "results"
    # 4 steps of 1 s: the run that does not fail trains on after the other failed at its start
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler=grid",
                  "hydra.sweeper.max_failure_rate=0", "lora.r=choice(2,4,8)", *TINY_TOPICS, "train.step_sleep_s=1",
                  f"results_dir={results}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    stop = lines.index("sweep: stopped: 1 of 1 trials failed (100%), more than hydra.sweeper.max_failure_rate=0 "
                       "allows; no new trials are started, those in flight finish")
    assert [n for n, line in enumerate(lines) if re.match(r"^trial [12]/3 lora\.r=\d: done ", line)][0] > stop
    trials = _only_study(results).trials
    # the grid's third cell was never asked; the trial in flight when the other failed finished and was told
    assert sorted(t.params["lora.r"] for t in trials) == [2, 4]
    assert sorted((t.state, t.user_attrs["status"]) for t in trials) == [
        (TrialState.COMPLETE, "done"), (TrialState.FAIL, "failed")]
    assert sorted(per_run(trainings()).values()) == [1, 1]  # each cell trained once, the third never
    done = next(t for t in trials if t.state == TrialState.COMPLETE)
    assert _optimization_results(tmp_path / "sweep") == {
        "name": "optuna", "best_params": {"lora.r": done.params["lora.r"]}, "best_value": done.value}


# -- custom_search_space ------------------------------------------------------------------------------

SEARCH = '''
def alpha_from_r(cfg, trial):
    """alpha = (alpha_scale + 1) x r: a derived parameter, from the trial's r and the sweep's config."""
    r = trial.params["lora.r"]
    scale = cfg.lora.alpha_scale + 1
    trial.suggest_int("lora.alpha", scale * r, scale * r)
    trial.set_user_attr("rule", f"alpha = {scale} r")


def broken(cfg, trial):
    return trial.params["no.such.param"]
'''


def test_custom_search_space_derives_a_parameter_that_the_run_gets(tmp_path, monkeypatch):
    (tmp_path / "mysearch.py").write_text(SEARCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # importable by the driver, as the README says
    results = tmp_path / "results"
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid", "lora.r=choice(2,4)",
                  "hydra.sweeper.custom_search_space=mysearch.alpha_from_r", *TINY_2, f"results_dir={results}"],
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = _only_study(results).trials
    assert [t.params for t in trials] == [{"lora.r": 2, "lora.alpha": 6}, {"lora.r": 4, "lora.alpha": 12}]
    for t in trials:
        run = _result(t)
        assert run["status"] == "done" and run["config"]["lora"]["r"] == t.params["lora.r"]
        assert run["config"]["lora"]["alpha"] == 3 * t.params["lora.r"]  # not the default 2 x r
        assert t.user_attrs["rule"] == "alpha = 3 r"
        assert t.user_attrs["model"] == "tiny-bert"  # the fixed overrides, shown to the function as the plugin does
    assert "trial 1/2 lora.r=2 lora.alpha=6: done" in out.stderr


def test_custom_search_space_that_raises_stops_the_study_before_anything_trains(tmp_path, monkeypatch):
    (tmp_path / "mysearch.py").write_text(SEARCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    results = tmp_path / "results"
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=3", "lora.r=choice(2,4)",
                  "hydra.sweeper.custom_search_space=mysearch.broken", *TINY_2, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    error = "hydra.sweeper.custom_search_space=mysearch.broken raised KeyError: 'no.such.param' (mysearch.py:11)"
    assert f"sweep: stopped: {error}; no new trials are started; fix it and run the same command again to " \
           "continue the study" in out.stderr.splitlines()
    [trial] = _only_study(results).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == error
    assert not list(results.glob("*/result.json")) and not re.search(r": started \(job", out.stderr)
    assert "this time 0 trained" in out.stderr


def test_custom_search_space_may_not_suggest_a_fixed_parameter():
    def suggests_r(cfg, trial):
        trial.suggest_int("lora.r", 2, 8)

    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(CustomSearchSpaceError, match=r"^hydra.sweeper.custom_search_space=x.suggests_r suggested "
                       r"lora.r, which an override fixes \(lora.r=4\): a parameter is searched or fixed, not both$"):
        extend_trial(suggests_r, "x.suggests_r", None, trial, {"lora.r": "4", "model": "tiny-bert"})
    assert trial.user_attrs == {"lora.r": "4", "model": "tiny-bert"}


@pytest.mark.parametrize("path, why", [
    ("alpha_from_r", "is invalid: give the dotted path of a function"),
    ("nosuchmodule.configure", "is invalid: there is no module 'nosuchmodule'; give the dotted path"),
    ("json.nosuch", "is invalid: json has no 'nosuch'; give the dotted path"),
    ("json.decoder.JSONDecoder.nosuch", "is invalid: json.decoder has no 'JSONDecoder.nosuch'"),
    ("json.__doc__", "is invalid: it is a str, not a function"),
])
def test_a_custom_search_space_that_is_no_function_is_named_with_what_is_missing(path, why):
    with pytest.raises(ConfigError) as e:
        load_custom_search_space(path)
    assert str(e.value).startswith(f"hydra.sweeper.custom_search_space={path!r} {why}")


def test_a_custom_search_space_may_be_any_callable_by_its_dotted_path():
    import json

    assert load_custom_search_space("json.decoder.JSONDecoder.decode") is json.decoder.JSONDecoder.decode
    assert load_custom_search_space(None) is None and load_custom_search_space("") is None


# -- invalid settings: one line before anything trains ------------------------------------------------

@pytest.mark.parametrize("setting, said", [
    ("hydra.sweeper.max_failure_rate=1.5",
     "sweep: hydra.sweeper.max_failure_rate=1.5 is invalid: it is the fraction of failed trials above which the "
     "study stops asking for more, a number from 0 (stop at the first failure) to 1 (never stop; default 1)"),
    ("hydra.sweeper.custom_search_space=nosuchmodule.configure",
     "sweep: hydra.sweeper.custom_search_space='nosuchmodule.configure' is invalid: there is no module "
     "'nosuchmodule'; give the dotted path of a function (cfg, trial) -> None, e.g. mysearch.alpha_from_r, "
     "importable by the driver (on PYTHONPATH, or in the project folder)"),
    ("hydra.sweeper.sampler=bogus",
     "sweep: hydra.sweeper.sampler='bogus' is unknown: choose one of tpe, random, grid, cmaes, nsgaii"),
    ("hydra.sweeper.direction=up", "sweep: hydra.sweeper.direction='up' is invalid: choose maximize or minimize"),
    # the pruner is made by each trial's run: unchecked, every trial loaded its model to fail there, and exit 0
    ("hydra.sweeper.pruner=bogus",
     "sweep: hydra.sweeper.pruner='bogus' is unknown: choose one of none, median, hyperband"),
    ("hydra.sweeper.pruner={name:median,n_warmup:3}", "sweep: hydra.sweeper.pruner: median does not accept ['n_warmup']: "
     "MedianPruner.__init__() got an unexpected keyword argument 'n_warmup'"),
    ("hydra.sweeper.n_trials=0", "sweep: hydra.sweeper.n_trials=0, n_jobs=1: both must be at least 1"),
])
def test_an_invalid_setting_is_refused_before_anything_trains(tmp_path, setting, said):
    out = launch([*SWEEPER, "lora.r=choice(2,4)", setting, *TINY_2], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"{said}; nothing was trained" in out.stderr.splitlines()
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()


@pytest.mark.parametrize("value", [-0.1, 1.01, "half", True, None, math.nan])
def test_max_failure_rate_must_be_a_number_from_0_to_1(value):
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.max_failure_rate=.* is invalid: it is the fraction"):
        check_max_failure_rate(value)


@pytest.mark.parametrize("value", [0, 0.25, 1, 1.0])
def test_max_failure_rate_from_0_to_1_is_valid(value):
    assert check_max_failure_rate(value) == float(value)


# -- the sampler as a config group ----------------------------------------------------------------------

def _sweeper(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)


SPACE = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
         "lora.r": optuna.distributions.CategoricalDistribution([2, 4, 8])}


def test_the_sampler_groups_keys_reach_optuna():
    tpe = _sweeper(["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.n_startup_trials=3"])
    sampler = make_sampler(tpe["sampler"], tpe["seed"], SPACE)
    assert type(sampler) is optuna.samplers.TPESampler and sampler._n_startup_trials == 3
    nsga = _sweeper(["hydra/sweeper/sampler=nsgaii", "hydra.sweeper.sampler.population_size=4"])
    assert make_sampler(nsga["sampler"], None, SPACE)._population_size == 4
    grid = _sweeper(["hydra/sweeper/sampler=grid"])
    assert is_grid(grid["sampler"]) and not is_grid(tpe["sampler"])
    for name, cls in (("random", "RandomSampler"), ("cmaes", "CmaEsSampler")):
        group = _sweeper([f"hydra/sweeper/sampler={name}"])
        assert type(make_sampler(group["sampler"], None, SPACE)).__name__ == cls
    # the plain spelling is unchanged: a name
    assert _sweeper(["hydra.sweeper.sampler=random"])["sampler"] == "random"


def _asked(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    """The params `sampler` asks for n trials, each told pruned (as over-budget trials are)."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    asked = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=SPACE)
        asked.append(trial.params)
        study.tell(trial, state=TrialState.PRUNED)
    return asked


def test_both_spellings_of_the_sampler_and_its_seed_ask_the_same_params(tmp_path):
    space = ["train.lr=tag(log, interval(1e-4, 1e-2))", "lora.r=choice(2,4,8)"]
    asked = {}
    for name, spelling in (("plugin", ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123"]),
                           ("lorasweep", ["hydra.sweeper.sampler=tpe", "hydra.sweeper.seed=123"])):
        # a budget of 1 parameter: each trial is asked, found over budget and told pruned; nothing trains
        out = launch([*SWEEPER, "hydra.sweeper.n_trials=3", f"hydra.sweeper.study_name={name}", *spelling, *space,
                      "budget.max_trainable=1", *TINY_2, f"results_dir={tmp_path / 'results'}"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "sampler TPESampler" in out.stderr
        study = optuna.load_study(study_name=name, storage=_storage(tmp_path / "results"))
        asked[name] = [t.params for t in study.trials]
    assert asked["plugin"] == asked["lorasweep"] == _asked(optuna.samplers.TPESampler(seed=123), 3)
    assert asked["plugin"] != _asked(optuna.samplers.TPESampler(seed=124), 3)  # the seed is what made them equal


def test_the_sampler_groups_own_seed_wins_over_the_sweepers():
    both = _sweeper(["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=5", "hydra.sweeper.seed=6"])
    assert _asked(make_sampler(both["sampler"], both["seed"], SPACE), 2) == \
        _asked(optuna.samplers.RandomSampler(seed=5), 2) != _asked(optuna.samplers.RandomSampler(seed=6), 2)
    unset = _sweeper(["hydra/sweeper/sampler=random", "hydra.sweeper.seed=6"])
    assert _asked(make_sampler(unset["sampler"], unset["seed"], SPACE), 2) == \
        _asked(optuna.samplers.RandomSampler(seed=6), 2)
