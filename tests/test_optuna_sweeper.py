"""The Optuna sweeper plugin, end to end: real multiruns of tiny models, as a user launches them."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import NOT_HELD, TINY_TOPICS, Sweep, compose_config, launch, wait_gone, wait_until
from lorasweep.run.plan import plan_run

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


def test_the_same_command_started_again_while_its_study_runs_is_refused_and_the_first_goes_on(tmp_path, hold):
    """A second driver of one study took the first's RUNNING trials for abandoned ones and failed
    them, and the first died telling them (UpdateFinishedTrialError)."""
    results = tmp_path / "results"
    args = [*SWEEPER, "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=2", "train.lr=choice(1e-3,2e-3)",
            *TINY_TOPICS, f"results_dir={results}"]
    held = hold(step=2)  # the first's trial waits mid-training until the second has been refused
    with Sweep(args, tmp_path) as first:
        held.wait(sweeps=(first,))
        second = launch(args, cwd=tmp_path, env=NOT_HELD)  # had it trained (not refused), it fails, not hangs
        held.release()
        assert first.wait(timeout=300) == 0, first.output[-3000:]
    assert second.returncode == 1, second.stderr[-3000:]
    assert re.search(r"^sweep: optuna study 'lorasweep-[0-9a-f]{10}' is being driven by pid \d+ on \S+, since "
                     r"[\d:]+: the same command goes on there; .*nothing was started here$", second.stderr, re.M)
    assert "started" not in second.stderr.replace("nothing was started here", "")
    study = _only_study(results)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # none failed as abandoned
    assert not (results / ".optuna").exists()  # the study's driver claim went with its driver


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


# tiny runs of 2 steps, evaluated at step 2
TINY_2 = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + ["train.max_steps=2"]
LR_AND_DROPOUT = ["train.lr=tag(log, interval(1e-4, 1e-2))", "lora.dropout=interval(0.0, 0.2)"]


@pytest.mark.parametrize("sampler,cls", [("tpe", "TPESampler"), ("cmaes", "CmaEsSampler"),
                                         ("nsgaii", "NSGAIISampler")])  # random: below; grid: the Pareto test
def test_each_sampler_is_the_one_that_samples(tmp_path, sampler, cls):
    results = tmp_path / "results"
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=2", f"hydra.sweeper.sampler={sampler}", "hydra.sweeper.seed=3",
                  *LR_AND_DROPOUT, *TINY_2, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(rf"^optuna study .*: 2 trials, 1 at a time, sampler {cls}$", out.stderr, re.M)
    trials = _only_study(results).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    by_key = {r["run_key"]: r for r in _results(results).values()}
    for t in trials:
        run = by_key[t.user_attrs["run_key"]]
        assert t.value == run["objective"]["value"]
        assert (run["config"]["train"]["lr"], run["config"]["lora"]["dropout"]) == \
            (t.params["train.lr"], t.params["lora.dropout"])
    # the same sampler, seeded the same, asked and told the same, asks the same params: it did the sampling
    # (CMA-ES's second trial is its own; TPE's and NSGA-II's first ones are their seeded startup samples)
    space = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "lora.dropout": optuna.distributions.FloatDistribution(0.0, 0.2)}
    replay = optuna.create_study(sampler=getattr(optuna.samplers, cls)(seed=3), direction="maximize")
    for t in trials:
        assert t.distributions == space
        asked = replay.ask(fixed_distributions=space)
        assert asked.params == t.params
        replay.tell(asked, t.value)


def test_a_seed_repeats_a_random_search_and_stored_runs_are_reused(tmp_path):
    results = tmp_path / "results"
    space = ["train.lr=tag(log, interval(1e-4, 1e-2))", "lora.r=choice(2,4,8)"]

    def search(name: str, seed: int, store: Path, *more: str):
        out = launch([*SWEEPER, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=random",
                      f"hydra.sweeper.seed={seed}", f"hydra.sweeper.study_name={name}", *space, *TINY_2, *more,
                      f"results_dir={store}"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        study = optuna.load_study(study_name=name, storage=_storage(store))
        return out, [t.params for t in study.trials], study

    first, params, _ = search("first", 7, results)
    assert re.search(r"^optuna study 'first' .* sampler RandomSampler$", first.stderr, re.M)
    assert "this time 2 trained, 0 reused" in first.stderr and len(_results(results)) == 2
    before = _mtimes(results)
    # a fresh study, the same seed: the same params in the same order; their runs are in the results
    # store, so each trial takes the stored result and nothing trains
    second, again, study = search("second", 7, results)
    assert again == params
    assert second.stderr.count("(reused stored result)") == 2 and "started" not in second.stderr
    assert "this time 0 trained, 2 reused" in second.stderr
    assert _mtimes(results) == before
    stored = {r["run_key"]: r["objective"]["value"] for r in _results(results).values()}
    assert all(t.state == TrialState.COMPLETE and t.value == stored[t.user_attrs["run_key"]] for t in study.trials)
    # another seed samples other params (a budget of 1 parameter keeps them from training: each trial is
    # sampled, found over budget and told pruned)
    _, other, _ = search("third", 8, tmp_path / "elsewhere", "budget.max_trainable=1")
    assert len(other) == 2 and other != params and other[0]["train.lr"] != params[0]["train.lr"]


def test_several_objectives_give_a_pareto_front(tmp_path):
    results = tmp_path / "results"
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler=grid", "lora.r=choice(2,4,8)",
                  "hydra.sweeper.objectives=[metrics.test.accuracy,params.trainable]",
                  "hydra.sweeper.direction=[maximize,minimize]", *TINY_2, f"results_dir={results}",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    study = _only_study(results)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # the grid walks its 3 cells in order, once each (n_trials=5 is capped at the grid's size)
    assert [t.params["lora.r"] for t in study.trials] == [2, 4, 8]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    points = {}
    for t in study.trials:
        run = json.loads((Path(t.user_attrs["result_dir"]) / "result.json").read_text())
        assert t.values == [run["metrics"]["test"]["accuracy"], run["params"]["trainable"]]
        points[t.number] = (run["metrics"]["test"]["accuracy"], run["params"]["trainable"])
    # the front printed is the study's, and it is the set of runs no other run dominates
    printed = out.stderr.split("Pareto front (metrics.test.accuracy, params.trainable):\n", 1)[1]
    front = {int(n) for n in re.findall(r"^  \S+ \S+  trial #(\d+): lora.r=\d+$", printed, re.M)}
    assert front == {t.number for t in study.best_trials}
    dominated = {a for a, (acc_a, n_a) in points.items() for b, (acc_b, n_b) in points.items()
                 if acc_b >= acc_a and n_b <= n_a and (acc_b, n_b) != (acc_a, n_a)}
    assert front == set(points) - dominated and front
    # and it is in the sweep folder, as hydra-optuna-sweeper writes it: the front's params and values
    written = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert written == {"name": "optuna",
                       "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials]}
    assert {s["params"]["lora.r"] for s in written["solutions"]} == {study.trials[n].params["lora.r"] for n in front}


def test_hyperband_pruner_prunes_from_the_workers(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    study = optuna.create_study(storage=_storage(results), study_name="hyperband", direction="maximize")
    study.enqueue_trial({"train.lr": 3e-2})  # learns: complete
    study.enqueue_trial({"train.lr": 1e-9})  # does not: behind the first at the first rung (step 2)
    # max_resource 2: one bracket, so both trials compete in it (with the default "auto", the first trial
    # reports before any trial finished, and hyperband keeps no rung of it to prune the second against)
    out = launch([*SWEEPER, "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=hyperband",
                  "hydra.sweeper.pruner={name:hyperband,max_resource:2}", "train.lr=tag(log, interval(1e-9, 1e-1))",
                  *TINY_TOPICS, f"results_dir={results}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    good, bad = optuna.load_study(study_name="hyperband", storage=_storage(results)).trials
    assert (good.state, bad.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    for t, status, last in ((good, "done", 4), (bad, "pruned", 2)):
        run = json.loads((Path(t.user_attrs["result_dir"]) / "result.json").read_text())
        assert run["status"] == status and run["curve"][-1]["step"] == last
        # every evaluation after step 0 was reported from the worker, up to where the run stopped
        assert t.intermediate_values == {p["step"]: p["accuracy"] for p in run["curve"] if p["step"] > 0}
    assert bad.intermediate_values[2] < good.intermediate_values[2]
    assert "pruned at step 2" in out.stderr and "1 complete, 1 pruned, 0 failed, 0 over budget" in out.stderr
