"""The fault tests of issue 13, "Sweeps that survive": runs and sweeps that meet a fault (a diverging
loss, ...) end with a result that says what happened, and the sweep around them goes on.

Each kind of fault has its own section below; its tests go through the public interface (launch.py
subprocesses, or run_config on a composed config) with tiny models.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import TINY_TOPICS, compose_config, launch
from lorasweep.run.lifecycle import run_config
from lorasweep.run.store import write_json_atomically


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (as jq, JavaScript and Go do)."""
    def refuse(constant):
        raise ValueError(f"non-finite literal {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


# == Divergence: the training loss becomes NaN (train.lr=1e4), and strict JSON ======================
#
# TINY_TOPICS at lr=1e4 (seed 0): step 1's loss is 3.25, step 2's 51903.6, step 3's NaN. The run
# stops at step 3 with status diverged; its eval loss at step 2 is already NaN (written as null).

TINY_ANY_STEPS = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")]
DIVERGING = [*TINY_ANY_STEPS, "train.max_steps=8", "train.lr=1e4"]
DIVERGES_AT = 3
REASON = re.compile(r"^the training loss became nan at step (\d+) \(last finite loss (\S+) at step (\d+)\)$")


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """Runs through run_config. Store `cell`: the diverging run, and a done run of the same cell (the
    same lr, 2 steps: it ends before the NaN). Store `sparse_logs`: the diverging run logging every
    2nd step only (train.eval_steps=10), which must stop at the same step."""
    root = tmp_path_factory.mktemp("diverging")
    cell, sparse = root / "cell", root / "sparse_logs"
    out = {"root": root, "cell": cell}
    out["diverged"] = run_config(compose_config([*DIVERGING, f"results_dir={cell}"]))
    out["done"] = run_config(compose_config([*TINY_ANY_STEPS, "train.max_steps=2", "train.lr=1e4",
                                             f"results_dir={cell}"]))
    out["sparse"] = run_config(compose_config([*DIVERGING, "train.eval_steps=10", f"results_dir={sparse}"]))
    return out


def _folder(result: dict, store: Path) -> Path:
    return store / f"{result['slug']}-{result['run_key']}"


def test_a_diverging_run_stops_at_the_first_nan_loss(diverging):
    result, folder = diverging["diverged"], _folder(diverging["diverged"], diverging["cell"])
    assert result["status"] == "diverged"
    step, last_loss, last_step = REASON.match(result["reason"]).groups()
    d = result["divergence"]
    assert (int(step), int(last_step)) == (d["step"], d["last_finite_step"]) == (DIVERGES_AT, DIVERGES_AT - 1)
    assert d["loss"] == "nan" and float(last_loss) == pytest.approx(d["last_finite_loss"], rel=1e-5)
    assert math.isfinite(d["last_finite_loss"]) and d["last_finite_loss"] > 1000  # the jump before the NaN
    # its curve so far (steps 0 and 2), no test evaluation, no adapter, no checkpoints left
    assert [p["step"] for p in result["curve"]] == [0, 2]
    assert result["curve"][-1]["loss"] is None  # the eval loss at step 2 was NaN: null in the file
    assert "metrics" not in result and "objective" not in result and "artifacts" not in result
    assert result["timing"]["steps"] == DIVERGES_AT - 1
    assert sorted(p.name for p in folder.iterdir()) == ["result.json"]
    # the file is strict JSON and holds what run_config returned
    assert strict_json((folder / "result.json").read_text()) == result


def test_a_divergence_is_found_at_its_step_whatever_the_logging_steps(diverging):
    sparse = diverging["sparse"]  # logging_steps=2: the Trainer logs steps 2, 4, ... only
    assert sparse["status"] == "diverged" and sparse["divergence"]["step"] == DIVERGES_AT
    assert sparse["reason"] == diverging["diverged"]["reason"]


def test_a_diverged_run_is_not_trained_again(diverging):
    folder = _folder(diverging["diverged"], diverging["cell"])
    before = (folder / "result.json").stat().st_mtime_ns
    again = run_config(compose_config([*DIVERGING, f"results_dir={diverging['cell']}"]))
    assert again == diverging["diverged"]
    assert (folder / "result.json").stat().st_mtime_ns == before


def test_non_finite_numbers_are_written_as_null(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomically(target, {"nan": float("nan"), "inf": [float("inf"), -math.inf, 1.5],
                                   "np": (np.float32("nan"), np.float64(2.0), np.int64(3)),
                                   "torch": {"t": torch.tensor(float("inf")), "ok": torch.tensor(0.25)},
                                   "path": tmp_path})
    assert strict_json(target.read_text()) == {"nan": None, "inf": [None, None, 1.5], "np": [None, 2.0, 3],
                                               "torch": {"t": None, "ok": 0.25}, "path": str(tmp_path)}


@pytest.fixture(scope="module")
def diverging_grid(tmp_path_factory):
    """A grid of the diverging cell and a normal one, launched twice."""
    tmp = tmp_path_factory.mktemp("grid")
    args = ["-m", "train.lr=1e4,3e-2", *TINY_ANY_STEPS, "train.max_steps=8"]
    first = launch(args, cwd=tmp)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp / "results").glob("*/result.json")}
    second = launch(args, cwd=tmp)
    return {"root": tmp, "first": first, "second": second, "mtimes": mtimes}


def test_b_grid_counts_a_diverged_run_and_does_not_retrain_it(diverging_grid):
    first, second = diverging_grid["first"], diverging_grid["second"]
    assert first.returncode == 0, first.stderr[-3000:]  # a diverged run is a result, not a failure
    assert re.search(rf"^run \d/2 train\.lr=10000\.0: diverged at step {DIVERGES_AT}, the training loss became nan",
                     first.stderr, re.M), first.stderr[-3000:]
    assert "sweep: 2 runs: 1 done, 1 diverged; best: " in first.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in diverging_grid["mtimes"])
    assert statuses == ["diverged", "done"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep: 2 runs: 1 already done, 1 already diverged; best: " in second.stderr
    assert re.search(r"^run \d/2 train\.lr=10000\.0: already diverged, the training loss became nan at step",
                     second.stderr, re.M)
    assert "started" not in second.stderr
    store = diverging_grid["root"] / "results"
    assert {p: p.stat().st_mtime_ns for p in store.glob("*/result.json")} == diverging_grid["mtimes"]


@pytest.fixture(scope="module")
def diverging_study(tmp_path_factory):
    """An Optuna sweep of 2 trials: the diverging lr first, then a normal one."""
    tmp = tmp_path_factory.mktemp("optuna")
    results = tmp / "results"
    results.mkdir()
    storage = f"sqlite:///{results.resolve() / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="diverge", direction="maximize")
    study.enqueue_trial({"train.lr": 1e4})
    study.enqueue_trial({"train.lr": 3e-2})
    out = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=diverge",
                  "train.lr=choice(1e4,3e-2)", *TINY_ANY_STEPS, "train.max_steps=8", f"results_dir={results}"],
                 cwd=tmp)
    return {"root": tmp, "out": out, "study": optuna.load_study(study_name="diverge", storage=storage)}


def test_c_optuna_fails_a_diverged_trial_and_goes_on(diverging_study):
    out = diverging_study["out"]
    assert out.returncode == 0, out.stderr[-3000:]
    diverged, normal = diverging_study["study"].trials
    assert diverged.params["train.lr"] == 1e4 and diverged.state == TrialState.FAIL
    assert diverged.user_attrs["status"] == "diverged"
    assert REASON.match(diverged.user_attrs["reason"]).group(1) == str(DIVERGES_AT)
    assert normal.params["train.lr"] == 3e-2 and normal.state == TrialState.COMPLETE
    assert normal.user_attrs["status"] == "done" and 0 <= normal.value <= 1
    assert "1 complete, 0 pruned, 0 failed, 1 diverged, 0 over budget" in out.stderr
    assert re.search(r"^trial 1/2 train\.lr=\S+: diverged: the training loss became nan", out.stderr, re.M)


def test_d_analysis_counts_a_diverged_run_and_never_averages_it(diverging):
    from analysis import tables as T
    from analysis.load import load_results
    from analysis.report import build_tables, summary

    df, load = load_results([diverging["cell"]])
    assert load.loaded == 2 and load.n_skipped == 0
    assert sorted(df["status"]) == ["diverged", "done"]
    assert T.status_counts(df)["diverged"] == 1 and T.status_counts(df)["done"] == 1
    assert list(df.loc[df["status"] == "diverged", "diverged_step"]) == [DIVERGES_AT]
    done_accuracy = diverging["done"]["metrics"]["test"]["accuracy"]
    cells = T.cell_stats(df)
    assert len(cells) == 1  # one cell: max_steps and eval_steps are not cell keys
    assert cells.iloc[0]["n_seeds"] == 1 and cells.iloc[0]["accuracy"] == pytest.approx(done_accuracy)
    view = T.budget_view(df, None)
    assert list(view["statuses"]) == ["diverged:1,done:1"] and list(view["n_seeds"]) == [1]
    tabs = build_tables(df, None, "accuracy")
    assert any(line.endswith("diverged: 1") for line in summary(df, load, tabs, None, "accuracy"))


def test_e_every_json_file_written_is_strict(diverging, diverging_grid, diverging_study):
    files = [p for root in (diverging["root"], diverging_grid["root"], diverging_study["root"])
             for p in root.rglob("*.json")]
    results = [p for p in files if p.name == "result.json"]
    assert len(results) == 7  # 3 + 2 + 2 runs
    for path in files:
        strict_json(path.read_text())  # raises on NaN / Infinity
    # the done run at lr=1e4 had a NaN test loss: null, not NaN
    assert diverging["done"]["status"] == "done" and diverging["done"]["metrics"]["test"]["loss"] is None
