"""Coming from hydra-optuna-sweeper: what its users rely on, in lorasweep's Optuna sweeper.

optimization_results.yaml in the sweep folder. Real multiruns of tiny models as a user launches them.
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import yaml

from conftest import TINY_TOPICS, launch

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
