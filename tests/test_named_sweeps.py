"""Named sweeps in sweeps/: each composes, plans to its number of runs, and runs as a real multirun."""
import json

import pytest

from conftest import ROOT, TINY_TOPICS, launch

SWEEPS = {"rank_ablation": 5, "projection_ablation": 7, "method_comparison": 4, "alpha_ablation": 9,
          "dropout_lr": 9, "seeds": 3}


def test_every_named_sweep_is_tested_and_starts_with_its_command():
    assert {p.stem for p in (ROOT / "sweeps").glob("*.yaml")} == set(SWEEPS) | {"budget_1m"}
    for name in [*SWEEPS, "budget_1m"]:
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text().splitlines()
        assert text[0] == "# @package _global_" and text[1].startswith(f"# python launch.py -m +sweep={name}")


@pytest.mark.parametrize("name,runs", SWEEPS.items())
def test_named_sweep_plans_its_runs_on_the_embedded_default(tmp_path, name, runs):
    proc = launch(["-m", f"+sweep={name}", "hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"total: {runs} runs: {runs} not started; {runs} to run" in proc.stdout


def test_seeds_and_alpha_sweeps_run_for_real(tmp_path):
    proc = launch(["-m", "+sweep=alpha_ablation", "lora.r=4", "train.seed=0,1"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 6 runs: 6 done" in proc.stderr  # the command line narrows and extends the sweep
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "results").glob("*/result.json")]
    cells = sorted((c["lora"]["alpha"], c["train"]["seed"]) for c in configs)
    assert cells == [(2.0, 0), (2.0, 1), (4.0, 0), (4.0, 1), (8.0, 0), (8.0, 1)]  # r/2, r, 2r at r=4


def test_budget_1m_is_an_optuna_search_under_the_budget(tmp_path):
    import optuna

    proc = launch(["-m", "+sweep=budget_1m", "hydra.sweeper.n_trials=3", "budget.max_trainable=3000",
                   f"results_dir={tmp_path / 'results'}"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    assert summary.n_trials == 3
    results = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]
    assert all(r["budget"]["max_trainable"] == 3000 for r in results)  # the command line's budget wins
    assert all(r["params"]["trainable"] <= 3000 for r in results if r["status"] == "done")
