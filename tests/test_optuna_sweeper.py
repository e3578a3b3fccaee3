"""The Optuna sweeper plugin, end to end: real multiruns of tiny models, as a user launches them."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_TOPICS, Sweep, compose_config, launch, wait_gone, wait_until
from lorasweep.planning import plan_run

SWEEPER = ["-m", "hydra/sweeper=optuna"]


def _storage(results: Path) -> str:
    return f"sqlite:///{results.resolve() / 'optuna.db'}"


def _only_study(results: Path) -> optuna.Study:
    names = optuna.get_all_study_names(storage=_storage(results))
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=_storage(results))


def _results(results: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted(results.glob("*/result.json"))}


def _mtimes(results: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in results.glob("*/result.json")}


def _kill_while_trial_trains(args: list[str], cwd: Path, trial: int, total: int) -> None:
    """Start the sweep and, once trial `trial` trains (its first step is in its log), kill the sweep and
    its workers as `kill` of its process group does; return once none of them runs."""
    with Sweep(args, cwd) as sweep:
        log = cwd / sweep.wait_for_line(rf"^trial {trial}/{total} .*: started \(job \d+, log: (.+)\)$")[0].group(1)
        wait_until(lambda: log.exists() and "train step " in log.read_text(), f"trial {trial} to train")
        workers = sweep.workers()
        os.killpg(sweep.proc.pid, signal.SIGTERM)
        sweep.wait()
    wait_gone(workers.values())  # none of them writes a result any more


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    """A 6-cell grid, 2 runs at a time, killed while trial 4 trains (2 trials told, trials 3 and 4 in
    flight) and started again with the same command."""
    tmp = tmp_path_factory.mktemp("restart")
    results = tmp / "results"
    # 4 steps of 1 s: trial 4, started once 2 trials are told, has 3 s left after its first step
    args = [*SWEEPER, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler=grid",
            "lora.r=choice(2,4,8)", "lora.proj=q,qv", *TINY_TOPICS, "train.step_sleep_s=1",
            f"results_dir={results}"]
    _kill_while_trial_trains(args, tmp, trial=4, total=6)
    before = _mtimes(results)
    trials_before = len(_only_study(results).trials)
    second = launch(args, cwd=tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"tmp": tmp, "results": results, "args": args, "before": before, "trials_before": trials_before,
            "second": second}


def test_killed_sweep_restarts_and_finishes_exactly_n_trials(restarted):
    results, second = restarted["results"], restarted["second"]
    study = _only_study(results)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    # whatever the kill left running (trial 4 at least) was failed as abandoned, not counted, and asked again
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert others and all(t.state == TrialState.FAIL and t.user_attrs["status"] == "abandoned" for t in others)
    # the grid's six cells, each once: six run keys, six results, all done
    assert sorted((t.params["lora.r"], t.params["lora.proj"]) for t in complete) == \
        [(2, "q"), (2, "qv"), (4, "q"), (4, "qv"), (8, "q"), (8, "qv")]
    assert len({t.user_attrs["run_key"] for t in complete}) == 6
    stored = _results(results)
    assert len(stored) == 6 and all(r["status"] == "done" for r in stored.values())
    # what was finished before the kill was not trained again
    assert len(restarted["before"]) >= 2
    after = _mtimes(results)
    assert all(after[p] == m for p, m in restarted["before"].items())
    # values told are the results' objectives
    by_key = {r["run_key"]: r["objective"]["value"] for r in stored.values()}
    assert all(t.value == by_key[t.user_attrs["run_key"]] for t in complete)
    # job numbers continue after the restart
    jobs = [int(j) for j in re.findall(r"started \(job (\d+)", second.stderr)]
    assert jobs and min(jobs) >= restarted["trials_before"]
    assert "sweep: 6/6 trials finished" in second.stderr


def test_finished_sweep_run_again_trains_nothing(restarted):
    results = restarted["results"]
    before = _mtimes(results)
    n_trials = len(_only_study(results).trials)
    third = launch(restarted["args"], cwd=restarted["tmp"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert _mtimes(results) == before
    assert len(_only_study(results).trials) == n_trials  # not even asked
    assert "this time 0 trained, 0 reused; nothing left to run" in third.stderr
    assert "started" not in third.stderr


def test_median_pruner_prunes_a_bad_trial(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    # the order matters to the pruner: a good lr first (complete), then a hopeless one
    study = optuna.create_study(storage=_storage(results), study_name="prune", direction="maximize")
    study.enqueue_trial({"train.lr": 3e-2})
    study.enqueue_trial({"train.lr": 1e-9})
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=prune",
                  "hydra.sweeper.pruner={name:median,n_startup_trials:1}", "train.lr=tag(log, interval(1e-9, 1e-1))",
                  *TINY_TOPICS, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    good, bad = optuna.load_study(study_name="prune", storage=_storage(results)).trials
    assert good.state == TrialState.COMPLETE and good.params["train.lr"] == 3e-2
    assert bad.state == TrialState.PRUNED and bad.user_attrs["status"] == "pruned"
    assert bad.intermediate_values == {2: 0.125}  # reported from the worker, stopped at the first evaluation
    record = json.loads((Path(bad.user_attrs["result_dir"]) / "result.json").read_text())
    assert record["status"] == "pruned" and record["curve"][-1]["step"] == 2
    assert "pruned at step 2" in out.stderr
    assert "1 complete, 1 pruned, 0 failed, 0 over budget" in out.stderr


def test_over_budget_trial_is_never_launched_from_an_overlay_file(tmp_path):
    results = tmp_path / "results"
    small, large = (plan_run(compose_config([*TINY_TOPICS, f"lora.r={r}", "lora.proj=v"])).predicted
                    for r in (2, 64))
    budget = (small + large) // 2
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "ob.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    n_trials: 2\n    sampler: grid\n"
        "    params:\n      lora.r: choice(2,64)\n      lora.proj: choice(v)\n")
    out = launch([f"--config-dir={tmp_path}", *SWEEPER, "+sweep=ob", f"budget.max_trainable={budget}",
                  *TINY_TOPICS, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = {t.params["lora.r"]: t for t in _only_study(results).trials}
    assert sorted(trials) == [2, 64]
    assert trials[2].state == TrialState.COMPLETE
    assert trials[64].state == TrialState.PRUNED and trials[64].user_attrs["status"] == "skipped_budget"
    # never launched: its result says skipped_budget with the count, as for grid sweeps
    skipped = json.loads((Path(trials[64].user_attrs["result_dir"]) / "result.json").read_text())
    assert skipped["status"] == "skipped_budget" and skipped["params"]["predicted"] == large
    assert not (Path(trials[64].user_attrs["result_dir"]) / "adapter").exists()
    assert sorted((r["config"]["lora"]["r"], r["status"]) for r in _results(results).values()) == \
        [(2, "done"), (64, "skipped_budget")]
    assert f"over budget ({large:,} > {budget:,})" in out.stderr
    assert "1 complete, 0 pruned, 0 failed, 1 over budget" in out.stderr
