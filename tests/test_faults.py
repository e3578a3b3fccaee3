"""The fault tests of issue 13 ("Sweeps that survive"): what a run and a sweep do when something
fails around them (a diverging loss, a full disk, an unwritable store, an unreadable result, out of
accelerator memory, two drivers on one store, a worker killed under its run, a run that fails once,
an interrupted sweep), as a user sees it: launch.py in a subprocess or run_config on a composed
config, with tiny models, asserting on the output, the exit status and what is left in the results store.

Each kind of fault has its own section below; add a new kind as a new section.
"""
from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import (NOT_HELD, TINY_TOPICS, Sweep, compose_config, counted_trainings, launch, per_run, wait_gone,
                      wait_until, with_hooks)
from lorasweep.errors import AcceleratorMemoryError, UnwritableStoreError
from lorasweep.run import memory
from lorasweep.run.claims import live_holder
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.run.store import check_writable, write_json_atomically, write_result
from lorasweep.run.study_storage import open_storage
from lorasweep.sweep.optuna_settings import storage_spec


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (as jq, JavaScript and Go do)."""
    def refuse(constant):
        raise ValueError(f"non-finite literal {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


# == Divergence: the training loss becomes NaN (train.lr=1e4), and strict JSON ===============

#
# TINY_TOPICS at lr=1e4 (seed 0): step 1's loss is 3.25, step 2's 51903.6, step 3's NaN. The run
# stops at step 3 with status diverged; its eval loss at step 2 is already NaN (written as null).

TINY_ANY_STEPS = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")]
DIVERGING = [*TINY_ANY_STEPS, "train.max_steps=8", "train.lr=1e4"]
DIVERGES_AT = 3
REASON = re.compile(r"^the training loss became nan at step (\d+) \(last finite loss (\S+) at step (\d+)\)$")


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """Runs through run_config. Store `cell`: the diverging run, and a done run beside it (the same
    lr, 2 steps: it ends before the NaN; so another cell, train.max_steps=2). Store `sparse_logs`: the diverging run logging every
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
    # its progress file stays, superseded by the result: the step before the bad one
    assert sorted(p.name for p in folder.iterdir()) == ["progress.json", "result.json"]
    assert json.loads((folder / "progress.json").read_text())["step"] == DIVERGES_AT - 1
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
    with pytest.MonkeyPatch.context() as mp:
        with_hooks(mp, LORASWEEP_COUNT_TRAININGS=str(tmp / "trainings.txt"))
        first = launch(args, cwd=tmp)
        mtimes = {p: p.stat().st_mtime_ns for p in (tmp / "results").glob("*/result.json")}
        second = launch(args, cwd=tmp)
    return {"root": tmp, "first": first, "second": second, "mtimes": mtimes,
            "trained": per_run(counted_trainings(tmp / "trainings.txt"))}


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
    assert diverging_grid["trained"] == {p.parent.name: 1 for p in diverging_grid["mtimes"]}  # by the first only


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
    assert len(cells) == 1  # the done run's: a diverged run has no mean to give
    assert cells.iloc[0]["n_seeds"] == 1 and cells.iloc[0]["accuracy"] == pytest.approx(done_accuracy)
    # two cells, the runs' max_steps told apart (2 and 8): the diverged one counted in its own, no mean
    view = T.budget_view(df, None).sort_values("train.max_steps")
    assert list(view["train.max_steps"]) == [2, 8] and list(view["statuses"]) == ["done:1", "diverged:1"]
    assert list(view["n_seeds"]) == [1, 0] and view["accuracy"].iloc[0] == pytest.approx(done_accuracy)
    assert pd.isna(view["accuracy"].iloc[1])
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


# ==============================================================================================

# The results store: a full disk, an unwritable store, an unreadable result
# ==============================================================================================

#
# A full disk is a 64 KiB tmpfs (mounted here; the tests skip where that is impossible) with a filler
# file leaving room for a result.json (a few KiB) but not for a tiny run's adapter (41 KiB). A store
# that is not writable is a read-only tmpfs (root writes through permissions, not through a read-only
# mount) or a path under a regular file.

ADAPTER_BYTES_AT_LEAST = 40_000  # tiny-bert's lora adapter (r=8, with its classification head)
ROOM_LEFT = 24 * 1024            # what the filler leaves: result.json and traceback.txt fit, the adapter not


@contextmanager
def tmpfs(where: Path, size: str = "64k"):
    """A tmpfs of `size` mounted on `where` for the block, always unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it now anyway


def read_only(where: Path, ro: bool = True) -> None:
    """Remount the tmpfs on `where` read-only (`ro=False`: writable again)."""
    remounted = subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(where)], capture_output=True, text=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs {'read-only' if ro else 'writable'}: {remounted.stderr.strip()}")


def fill(store: Path, leave: int = ROOM_LEFT) -> None:
    """Fill the filesystem holding `store` up to `leave` free bytes."""
    st = os.statvfs(store)
    free = st.f_bavail * st.f_frsize
    (store / "filler").write_bytes(b"\0" * max(0, free - leave))


def folder_of(overrides: list[str], store: Path) -> Path:
    """The run folder a config's result goes to (planned from the config alone, nothing loaded)."""
    return plan_run(compose_config(overrides + [f"results_dir={store}"])).folder(store)


def seed_done(overrides: list[str], store: Path) -> Path:
    """A finished run in the store (its result.json as the store writes it): the path of its result."""
    folder = folder_of(overrides, store)
    plan = plan_run(compose_config(overrides + [f"results_dir={store}"]))
    test = {"accuracy": 0.5, "accuracy_se": 0.125, "n": 16}
    write_result(folder, {"run_key": plan.spec.run_key, "slug": plan.spec.slug, "status": "done", "reason": "",
                          "config": plan.spec.defining(), "metrics": {"test": test},
                          "objective": {"name": "test.accuracy", "value": 0.5, "direction": "maximize"}})
    return folder / "result.json"


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


# -- a full disk -----------------------------------------------------------------------------------------

def test_full_disk_single_run_says_path_and_cause_in_one_line(tmp_path):
    with tmpfs(tmp_path / "full") as store:
        kept = seed_done(TINY_TOPICS + ["method=lora", "lora.r=4"], store)
        kept_bytes = kept.read_bytes()
        fill(store)
        run = TINY_TOPICS + ["method=lora", "lora.r=8"]
        folder = folder_of(run, store)
        proc = launch(run + [f"results_dir={store}"], cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr[-3000:]
        no_traceback(proc.stderr)
        weights = folder / "adapter" / "adapter_model.safetensors"
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert line.startswith(f"error: No space left on device writing {weights}"), line
        assert kept.read_bytes() == kept_bytes  # a finished run's result is untouched
        if (folder / "result.json").exists():  # small: it fits in what is left, but need not
            result = json.loads((folder / "result.json").read_text())
            assert result["status"] == "failed" and "No space left on device" in result["reason"]
        assert not (folder / "adapter").exists()  # half an adapter was removed, not left for a loader to trip on


def test_full_disk_stops_a_grid_sweep_at_the_first_run_it_fails(tmp_path, trainings):
    with tmpfs(tmp_path / "full") as store:
        kept = seed_done(TINY_TOPICS + ["lora.r=4"], store)
        kept_bytes = kept.read_bytes()
        fill(store)
        proc = launch(["-m", "lora.r=4,8,16"] + TINY_TOPICS + [f"results_dir={store}"], cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr[-3000:]
        no_traceback(proc.stderr)
        failed = folder_of(TINY_TOPICS + ["lora.r=8"], store)
        weights = failed / "adapter" / "adapter_model.safetensors"
        assert "run 1/3 lora.r=4: already done" in proc.stderr
        assert re.search(rf"^run 2/3 lora.r=8: FAILED after \d+s: No space left on device writing {re.escape(str(weights))}$",
                         proc.stderr, re.M), proc.stderr[-3000:]
        assert "sweep: stopped: No space left on device; the 1 run not started would fail the same way" in proc.stderr
        assert "run 3/3 started" not in proc.stderr
        assert "sweep: 3 runs: 1 already done, 1 failed, 1 not started" in proc.stderr
        assert kept.read_bytes() == kept_bytes
        assert not folder_of(TINY_TOPICS + ["lora.r=16"], store).exists()
        assert per_run(trainings()) == {failed.name: 1}  # the done run not again, the one after it not at all
        if (failed / "result.json").exists():
            assert json.loads((failed / "result.json").read_text())["status"] == "failed"


def test_full_disk_stops_an_optuna_study_whose_trial_is_asked_again_once_there_is_room(tmp_path, trainings):
    """A trial's run fails on the full store's write: the study stops in one line, as a grid does, and
    that trial is not counted, the store's fault and not the run's: once there is room, the same
    command trains its cell and the study ends at n_trials, all complete. Before, the trial was told
    failed and counted, so the study ended without ever training its run."""
    with tmpfs(tmp_path / "full", size="1m") as store:  # room for both runs once the filler goes
        study = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=2",
                 "lora.r=choice(4,8)", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", *TINY_TOPICS,
                 f"results_dir={store}"]  # the storage beside the store: only the runs' writes meet the full disk
        fill(store)
        stopped = launch(study, cwd=tmp_path)
        said = stopped.stdout + stopped.stderr
        assert stopped.returncode == 1, said[-3000:]
        no_traceback(said)
        assert re.search(r"^trial 1/2 lora.r=\d: not finished: No space left on device writing \S+; asked again when "
                         r"the same command runs again$", said, re.M), said[-3000:]
        assert "sweep: stopped: No space left on device; no more trials are started" in said
        (store / "filler").unlink()
        again = launch(study, cwd=tmp_path)
        said = again.stdout + again.stderr
        assert again.returncode == 0, said[-3000:]
        assert "sweep: 2/2 trials finished in study" in said and ": 2 complete, 0 pruned, 0 failed" in said, said[-3000:]
    assert sorted(per_run(trainings()).values()) == [1, 2]  # the refused run trained again, the other once


@pytest.mark.parametrize("storage, refuse, written", [
    (lambda store: f"hydra.sweeper.storage=journal://{store}/optuna.journal", lambda store: read_only(store),
     lambda store: rf"Read-only file system writing {re.escape(str(store))}/optuna\.journal\S*"),
    (lambda store: None, lambda store: fill(store, leave=0),
     lambda store: rf"No space left on device writing sqlite:///{re.escape(str(store))}/optuna\.db")],
    ids=["journal-read-only", "sqlite-full"])
def test_an_optuna_study_whose_storage_the_store_refuses_stops_in_one_line_and_is_continued(
        tmp_path, trainings, hold, storage, refuse, written):
    """The study's storage in the results store: a journal file (the SLURM default) the store turns
    read-only under, or the local default, a SQLite file, whose disk fills ("database or disk is full"),
    while a trial trains. Its run fails on its write, and telling the study so fails too. The driver
    says it in one line and exits 1, the trial left RUNNING; once the store takes writes again, the same
    command asks that trial again and the study ends at n_trials. Before, the driver ended in a
    traceback: the journal lock's OSError (a chaos soak with the journal in the store: 7 in 7 read-only
    faults), Optuna's StorageInternalError."""
    with tmpfs(tmp_path / "results", size="8m") as store:
        study = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=2",
                 "lora.r=choice(2,4)", *filter(None, [storage(store)]), *TINY_TOPICS, f"results_dir={store}"]
        held = hold(step=2)
        with Sweep(study, tmp_path) as sweep:
            held.wait(sweeps=(sweep,))
            refuse(store)
            held.release()
            code = sweep.wait(timeout=300)
        if (store / "filler").exists():
            (store / "filler").unlink()
        else:
            read_only(store, ro=False)
        said = sweep.output
        assert code == 1, said[-3000:]
        no_traceback(said)
        assert re.search(rf"^sweep: stopped: the study's storage refused a write: {written(store)}; the trials in "
                         r"flight were stopped and are asked again when the same command runs again, once it can be "
                         r"written$", said, re.M), said[-3000:]
        again = launch(study, cwd=tmp_path, env=NOT_HELD)
        said = again.stdout + again.stderr
        assert again.returncode == 0, said[-3000:]
        assert re.search(r"^trial #0 \(left running\) lora.r=\d: abandoned by a stopped sweep, asked again$", said, re.M)
        assert "sweep: 2/2 trials finished in study" in said and ": 2 complete, 0 pruned, 0 failed" in said, said[-3000:]
        assert sorted(statuses(store).values()) == ["done", "done"]
    assert sorted(per_run(trainings()).values()) == [1, 2]  # the refused run trained again, the other once



def test_a_run_whose_report_the_study_s_storage_refuses_names_the_storage(tmp_path, hold):
    """A run in a worker reports each evaluation to the study (run/pruning). When the study's storage,
    on a filesystem of its own, is full, the run fails naming that storage, where before it named its
    own folder, whose writes were all fine. The driver then stops on the same storage in one line."""
    store = tmp_path / "results"
    with tmpfs(tmp_path / "study", size="8m") as study_fs:
        url = f"sqlite:///{study_fs}/optuna.db"
        study = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=2",
                 "lora.r=choice(2,4)", f"hydra.sweeper.storage={url}", *TINY_TOPICS, f"results_dir={store}"]
        held = hold(step=2)
        with Sweep(study, tmp_path) as sweep:
            held.wait(sweeps=(sweep,))
            fill(study_fs, leave=0)
            held.release()
            code = sweep.wait(timeout=300)
    said = sweep.output
    assert code == 1, said[-3000:]
    no_traceback(said)
    refused = f"No space left on device writing {url}"
    assert [json.loads(p.read_text())["reason"] for p in store.glob("*/result.json")] == [f"StoreError: {refused}"]
    assert f"sweep: stopped: the study's storage refused a write: {refused}; " in said, said[-3000:]


# -- a results_dir that cannot be written ------------------------------------------------------------------

@pytest.fixture(params=["read-only mount", "under a regular file", "a regular file"])
def unwritable(request, tmp_path):
    """(results_dir, the cause the refusal names)."""
    if request.param != "read-only mount":
        (tmp_path / "a-file").write_text("not a folder\n")
        if request.param == "a regular file":
            yield tmp_path / "a-file", "it is a file, not a folder"
        else:
            yield tmp_path / "a-file" / "results", "Not a directory"
        assert (tmp_path / "a-file").read_text() == "not a folder\n"  # untouched
        return
    with tmpfs(tmp_path / "ro") as mount:
        read_only(mount)
        yield mount / "results", "Read-only file system"


def test_unwritable_results_dir_is_refused_before_loading(tmp_path, unwritable):
    store, cause = unwritable
    proc = launch(TINY_TOPICS + [f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    assert f"error: results_dir={store} is not writable: {cause}" in proc.stderr.splitlines()
    assert "trainable of" not in proc.stderr and "train step" not in proc.stderr  # no model was built


def test_unwritable_results_dir_stops_a_sweep_before_anything_trains(tmp_path):
    with tmpfs(tmp_path / "ro") as mount:
        read_only(mount)
        store = mount / "results"
        proc = launch(["-m", "lora.r=4,8"] + TINY_TOPICS + [f"results_dir={store}"], cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        no_traceback(proc.stderr)
        assert f"sweep: results_dir={store} is not writable: Read-only file system; nothing was trained" \
            in proc.stderr.splitlines()
        assert "started" not in proc.stderr and "trainable of" not in proc.stderr

        # the plan view writes nothing, so it does not probe: it looks, and says so in its total line
        plan = launch(["-m", "lora.r=4,8"] + TINY_TOPICS + [f"results_dir={store}", "hydra/launcher=plan"],
                      cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr[-3000:]
        total = plan.stdout.strip().splitlines()[-1]
        assert "; 2 to run; predicted " in total, total  # the runs' predicted time (tests/test_cost.py), then
        assert total.endswith(f"; results_dir={store} is not writable: Read-only file system"), total



_ANOTHER_STUDY_IN = ("import sys, optuna\nfrom lorasweep.run.study_storage import open_storage\n"
                     "for spec in sys.argv[1:]:\n    optuna.create_study(storage=open_storage(spec), study_name='another')")


@pytest.mark.parametrize("storage", ["sqlite:///{fs}/optuna.db", "journal://{fs}/optuna.journal",
                                     "journal://{fs}/new/optuna.journal", "sqlite:///{fs}/new/optuna.db"],
                         ids=["sqlite", "journal", "journal-new-folder", "sqlite-new-folder"])
def test_a_study_whose_storage_is_not_writable_is_refused_before_anything_trains(tmp_path, storage):
    """hydra.sweeper.storage on a read-only filesystem (a study's database or journal there already, or a
    new one): one line naming the setting, its value and the cause, exit 2, where before the driver
    ended in Optuna's, SQLAlchemy's or the journal's traceback."""
    with tmpfs(tmp_path / "studies", size="8m") as fs:
        spec = storage.format(fs=fs)
        subprocess.run([sys.executable, "-c", _ANOTHER_STUDY_IN, f"sqlite:///{fs}/optuna.db", f"journal://{fs}/optuna.journal"],
                       check=True)  # in a process of its own: a file left open here would keep the remount from happening
        read_only(fs)
        proc = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "lora.r=choice(2,4)",
                       f"hydra.sweeper.storage={spec}", *TINY_TOPICS, f"results_dir={tmp_path / 'results'}"],
                      cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    no_traceback(proc.stdout + proc.stderr)
    assert (f"sweep: hydra.sweeper.storage={spec} is not writable: Read-only file system; nothing was trained"
            in proc.stderr.splitlines()), proc.stderr[-3000:]
    assert "trainable of" not in proc.stderr and "started" not in proc.stderr


def _first_moves(start, base: Path, n: int, said, move) -> None:
    """A driver's first `move` (a function of the store) on `n` new stores, each at the same moment as
    its rivals' (`start`, a barrier); what it refused, put in `said` as one list at the end."""
    refused = []
    for i in range(n):
        start.wait()
        try:
            move(base / f"store-{i}" / "results")
        except Exception as e:
            refused.append(f"{type(e).__name__}: {e}")
    said.put(refused)


def _drivers_at_once(base: Path, n: int, moves: list) -> list[list[str]]:
    """One process per first move, each making it on the same `n` new stores at once; what each refused."""
    fork = multiprocessing.get_context("fork")  # the modules as they are here, without a new interpreter
    start, said = fork.Barrier(len(moves)), fork.Queue()
    drivers = [fork.Process(target=_first_moves, args=(start, base, n, said, move)) for move in moves]
    for p in drivers:
        p.start()
    refused = [said.get(timeout=120) for _ in drivers]  # read before joining: a full pipe blocks its writer
    for p in drivers:
        p.join(timeout=60)
    assert [p.exitcode for p in drivers] == [0] * len(moves)
    return refused


def test_drivers_started_at_once_on_a_new_store_all_find_it_writable(tmp_path):
    """Each driver creates a new results_dir, probes it and removes it again: a rival's removal between
    its mkdir and its probe file said "not writable: No such file or directory" (12 of 3 x 300 probes;
    the third driver of test_three_drivers_on_one_grid_train_each_run_once once exited so), and one
    inside mkdir (it found the folder there, then not a folder) said "File exists" (4 of 3 x 300 in a
    CI run; rarer here: 3 in 3 x 3 x 1000)."""
    assert _drivers_at_once(tmp_path, 300, [check_writable] * 3) == [[], [], []]


def _open_default_study(store: Path, cluster: bool) -> None:
    """An Optuna driver's first moves: the store probed, the study opened in its default storage."""
    check_writable(store)
    optuna.create_study(storage=open_storage(storage_spec(None, store, cluster)), study_name="s", load_if_exists=True)


@pytest.mark.parametrize("cluster", [False, True], ids=["sqlite", "journal"])
def test_a_study_started_at_once_with_grids_on_a_new_store_opens_its_default_storage(tmp_path, cluster):
    """A study's default storage is a file in the results store, which Optuna opens after the driver
    made the store; two grid drivers' probes of the same new store removed it between the two: "unable
    to open database file" (SQLite, 81 of 100 studies; a CI run's study exited so, and the grid beside
    it, test_a_grid_and_an_optuna_study_on_one_store_train_each_run_once, waited for it) or the
    journal's FileNotFoundError (42 of 100). The probes, in one look, never take the store for a file
    ("it is a file, not a folder": 1 of 200 probes here, the folder gone between two looks)."""
    study = functools.partial(_open_default_study, cluster=cluster)
    assert _drivers_at_once(tmp_path, 100, [study, check_writable, check_writable]) == [[], [], []]


# -- a result.json that cannot be read ---------------------------------------------------------------------

GARBAGE = {
    "truncated": (b'{"schema": 1, "run_key": "', "Unterminated string starting at: line 1 column 26"),
    "empty": (b"", "Expecting value: line 1 column 1"),
    "foreign JSON": (b'{"name": "not ours"}\n', "a JSON object without schema and status: not a lorasweep result"),
    "binary": (bytes(range(256)), "not UTF-8 text: a binary file"),
}


def test_plan_view_names_each_unreadable_result(tmp_path):
    store = tmp_path / "results"
    runs = {kind: TINY_TOPICS + [f"lora.r={r}"] for kind, r in zip(GARBAGE, (2, 4, 8, 16))}
    for kind, overrides in runs.items():
        folder = folder_of(overrides, store)
        folder.mkdir(parents=True)
        (folder / "result.json").write_bytes(GARBAGE[kind][0])
    proc = launch(["-m", "lora.r=2,4,8,16"] + TINY_TOPICS + [f"results_dir={store}", "hydra/launcher=plan"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, overrides in runs.items():
        path = folder_of(overrides, store) / "result.json"
        assert f"{path} is unreadable ({GARBAGE[kind][1]}): it trains again" in proc.stdout, proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("total: 4 runs: 4 with an unreadable result; 4 to run; predicted ")


def test_unreadable_result_is_said_and_trained_again_in_a_sweep(tmp_path, trainings):
    store = tmp_path / "results"
    seed_done(TINY_TOPICS + ["lora.r=4"], store)
    broken = folder_of(TINY_TOPICS + ["lora.r=8"], store) / "result.json"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(GARBAGE["truncated"][0])
    proc = launch(["-m", "lora.r=4,8"] + TINY_TOPICS + [f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = f"run 2/2 lora.r=8: {broken} is unreadable ({GARBAGE['truncated'][1]}), training it again"
    assert proc.stderr.splitlines().count(line) == 1, proc.stderr[-3000:]  # said once (the worker does not repeat it)
    assert "run 2/2 started: lora.r=8" in proc.stderr
    assert "sweep: 2 runs: 1 done, 1 already done" in proc.stderr
    result = json.loads(broken.read_text())  # overwritten by the run trained again
    assert result["status"] == "done" and result["schema"] == 1 and result["config"]["lora"]["r"] == 8
    assert per_run(trainings()) == {broken.parent.name: 1}


def test_unreadable_result_is_said_and_trained_again_in_a_single_run(tmp_path):
    store = tmp_path / "results"
    run = TINY_TOPICS + ["method=lora", "lora.r=8"]
    broken = folder_of(run, store) / "result.json"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(GARBAGE["foreign JSON"][0])
    proc = launch(run + [f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{broken} is unreadable ({GARBAGE['foreign JSON'][1]}), training it again" in proc.stderr
    assert "trainable of" in proc.stderr
    result = json.loads(broken.read_text())
    assert result["status"] == "done" and result["schema"] == 1


# ==============================================================================================

# Out of accelerator memory
# ==============================================================================================

# A CPU has no accelerator to fill, so the test hook LORASWEEP_RAISE_OOM (tests/hooks/sitecustomize.py)
# raises torch.cuda.OutOfMemoryError inside one run's Trainer.training_step, as CUDA's allocator does.
# The grid runs in one worker (n_jobs=1): the runs after the failed one train in the same process,
# which is where other tools let one out-of-memory error poison every later run.

OOM_LRS = ("0.001", "0.002", "0.003", "0.004")  # run 2 runs out of memory at its 2nd step; run 4 is stored done
OOM_AT = "0.002"
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
               "of which 1.06 GiB is free.")
OOM_REASON = f"out of accelerator memory on cuda:0 (it tried to allocate 2.00 GiB); {memory.hint('lora')}"


@pytest.fixture(scope="module")
def oom_grid(tmp_path_factory):
    """A 4-run grid in one worker: run 1 done, run 2 out of memory at its 2nd step, run 3 done after it
    in the same worker, run 4 already done in the store (a finished result that must not be lost)."""
    tmp = tmp_path_factory.mktemp("oom")
    store = tmp / "results"
    runs = {lr: TINY_TOPICS + [f"train.lr={lr}"] for lr in OOM_LRS}
    folders = {lr: folder_of(run, store) for lr, run in runs.items()}
    kept = seed_done(runs["0.004"], store)
    kept_bytes = kept.read_bytes()
    count = tmp / "trainings.txt"
    with pytest.MonkeyPatch.context() as mp:
        with_hooks(mp, LORASWEEP_COUNT_TRAININGS=str(count), LORASWEEP_RAISE_OOM=f"{folders[OOM_AT].name}@2")
        proc = launch(["-m", f"train.lr={','.join(OOM_LRS)}", *TINY_TOPICS, "hydra.launcher.n_jobs=1",
                       f"results_dir={store}"], cwd=tmp)
    return {"proc": proc, "folders": folders, "kept": kept, "kept_bytes": kept_bytes, "count": count}


def test_oom_run_is_failed_with_the_settings_that_drive_memory(oom_grid):
    folder = oom_grid["folders"][OOM_AT]
    result = strict_json((folder / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["reason"] == f"AcceleratorMemoryError: {OOM_REASON}"
    assert result["config"]["train"]["lr"] == float(OOM_AT)
    # torch's own error and where it was raised are kept beside it
    text = (folder / "traceback.txt").read_text()
    assert f"torch.OutOfMemoryError: {OOM_MESSAGE}" in text and "in training_step" in text
    assert not (folder / "adapter").exists()


def test_oom_sweep_goes_on_in_the_same_worker_and_says_the_failure_in_one_line(oom_grid):
    proc, folders = oom_grid["proc"], oom_grid["folders"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    tb = re.escape(str(folders[OOM_AT] / "traceback.txt"))
    assert re.search(rf"^run 2/4 train\.lr={OOM_AT}: FAILED after \d+s: {re.escape(OOM_REASON)} \(see {tb}\)$",
                     proc.stderr, re.M), proc.stderr[-3000:]
    assert "run 4/4 train.lr=0.004: already done" in proc.stderr
    assert "sweep: 4 runs: 2 done, 1 already done, 1 failed; best: " in proc.stderr
    # the runs after the failure trained in the same worker process, and finished
    counted = counted_trainings(oom_grid["count"])
    assert [name for _, name in counted] == [folders[lr].name for lr in ("0.001", "0.002", "0.003")]
    assert len({pid for pid, _ in counted}) == 1  # one worker: the same pid before and after the failure
    for lr in ("0.001", "0.003"):
        result = strict_json((folders[lr] / "result.json").read_text())
        assert result["status"] == "done" and 0 <= result["metrics"]["test"]["accuracy"] <= 1
        assert result["timing"]["steps"] == 4
    assert oom_grid["kept"].read_bytes() == oom_grid["kept_bytes"]  # the stored result is untouched


def test_oom_single_run_says_one_line_and_exits_1(tmp_path, monkeypatch):
    store = tmp_path / "results"
    run = TINY_TOPICS + ["train.lr=0.002"]
    folder = folder_of(run, store)
    with_hooks(monkeypatch, LORASWEEP_RAISE_OOM=f"{folder.name}@1")
    proc = launch(run + [f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    no_traceback(proc.stderr)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [f"error: {OOM_REASON}"]
    assert strict_json((folder / "result.json").read_text())["status"] == "failed"
    assert "torch.OutOfMemoryError" in (folder / "traceback.txt").read_text()


def test_a_model_that_does_not_fit_while_loading_fails_its_run_with_what_to_lower(tmp_path, monkeypatch):
    """A quantized base loads onto the GPU (bitsandbytes): running out of its memory there is the
    run's failure, recorded and said as one out of memory in training is, with what makes the
    weights smaller; a model that cannot be had at all stays the environment's error (not recorded)."""
    from lorasweep.model import loading
    from lorasweep.errors import ModelUnavailableError

    def load_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total "
                                     "capacity of 79.19 GiB of which 0.90 GiB is free.")

    cfg = compose_config(TINY_TOPICS + [f"results_dir={tmp_path}"])
    folder = plan_run(cfg).folder(tmp_path)
    monkeypatch.setattr(loading, "load_with_notes", load_oom)
    with pytest.raises(AcceleratorMemoryError) as e:
        run_config(cfg)
    reason = ("out of accelerator memory on cuda:0 (it tried to allocate 1.50 GiB) while loading the model; to use "
              "less memory: model.dtype=bfloat16 (half the base's weights), method=qlora (4 bits), or a smaller "
              "model, or a GPU with more free memory")
    assert str(e.value) == reason
    result = strict_json((folder / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == f"AcceleratorMemoryError: {reason}"
    assert "torch.OutOfMemoryError: CUDA out of memory" in (folder / "traceback.txt").read_text()

    def unavailable(*args, **kwargs):
        raise ModelUnavailableError("model 'x' is not in the local cache and the hub cannot be reached")

    monkeypatch.setattr(loading, "load_with_notes", unavailable)
    other = compose_config(TINY_TOPICS + ["train.seed=7", f"results_dir={tmp_path}"])
    with pytest.raises(ModelUnavailableError):
        run_config(other)
    assert not (plan_run(other).folder(tmp_path) / "result.json").exists()


def test_oom_hint_names_only_settings_that_exist():
    cfg = compose_config(TINY_TOPICS)
    methods = Path(__file__).resolve().parents[1] / "conf" / "method"
    drivers = {"train.batch_size", "train.eval_batch_size", "train.max_length", "lora.r", "lora.proj"}
    expected = {"lora": (drivers, ["qlora"]), "dora": (drivers, ["qlora"]),
                "qlora": (drivers, []), "qlora8": (drivers, []),  # already a quantized base
                "full": (drivers - {"lora.r", "lora.proj"}, ["lora"]),
                "none": ({"train.eval_batch_size", "train.max_length"}, [])}  # evaluated only
    for method, (fields, suggested) in expected.items():
        text = memory.hint(method)
        named = re.findall(r"\b(train|lora)\.(\w+)", text)
        assert {f"{group}.{name}" for group, name in named} == fields, method
        assert all(name in cfg[group] for group, name in named), text  # a real field of the config
        assert re.findall(r"\bmethod=(\w+)", text) == suggested, method
        assert all((methods / f"{m}.yaml").is_file() for m in suggested)


@pytest.mark.parametrize("error, recognised", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB."), True),
    (torch.OutOfMemoryError("XPU out of memory. Tried to allocate 1.00 GiB."), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB, "
                  "max allowed: 18.13 GB). Tried to allocate 512.00 MB on private pool."), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB."), True),
    (ValueError("a wrapper"), False),
    (MemoryError(), False),  # the host's memory: not an accelerator's
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), False),
    (RuntimeError("out of memory"), False),  # which memory? not said: not guessed
    (RuntimeError("CUDA error: device-side assert triggered"), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_oom_is_recognised_on_any_accelerator_and_only_there(error, recognised):
    assert (memory.out_of_memory(error) is error) == recognised


def test_oom_is_recognised_behind_a_wrapper():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    try:
        try:
            raise oom
        except RuntimeError as e:
            raise ValueError("evaluation failed") from e
    except ValueError as wrapped:
        assert memory.out_of_memory(wrapped) is oom


def test_oom_failure_frees_the_model_trainer_and_optimizer(tmp_path, monkeypatch):
    """In this process: when the error leaves run_config, nothing holds the failed run's model, its
    Trainer or their optimizer any more (weak references to them are dead), though the caller still
    holds the error: what lets the next run of a worker have the accelerator's memory."""
    import gc
    import weakref

    import transformers

    from lorasweep.model import methods

    refs = {}
    prepare, step = methods.prepare, transformers.Trainer.training_step

    def prepare_watched(*args, **kwargs):
        model = prepare(*args, **kwargs)
        refs["model"] = weakref.ref(model)
        return model

    def step_then_oom(self, *args, **kwargs):
        if self.state.global_step == 1:  # the 2nd step: the optimizer has stepped once, its state is there
            refs["trainer"], refs["optimizer"] = weakref.ref(self), weakref.ref(self.optimizer)
            refs["moments"] = [weakref.ref(s["exp_avg"]) for s in self.optimizer.state.values()]
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(methods, "prepare", prepare_watched)
    monkeypatch.setattr(transformers.Trainer, "training_step", step_then_oom)
    cfg = compose_config(TINY_TOPICS + [f"results_dir={tmp_path / 'results'}"])
    gc.disable()  # no collection by chance: what frees them is the lifecycle's doing
    try:
        with pytest.raises(AcceleratorMemoryError) as raised:
            run_config(cfg)
        alive = [name for name, ref in refs.items() if name != "moments" and ref() is not None]
        alive += [f"optimizer state {i}" for i, ref in enumerate(refs["moments"]) if ref() is not None]
    finally:
        gc.enable()
    assert len(refs["moments"]) > 0 and alive == []
    assert str(raised.value) == OOM_REASON
    assert raised.value.__context__ is None and raised.value.__cause__ is None  # torch's error not kept


# ==============================================================================================

# Two or three drivers on one results store: claims (lorasweep.run.claims)
# ==============================================================================================

# Trainings are counted in every process (conftest.trainings): a run trained twice shows twice.

CLAIMED_GRID = [*TINY_TOPICS, "train.max_steps=8", "hydra.launcher.threads=1"]
SIX_LRS = "train.lr=1e-3,2e-3,3e-3,4e-3,5e-3,6e-3"


def summary_counts(output: str) -> dict[str, int]:
    """The sweep's summary line as {outcome: count}: 'sweep: 6 runs: 2 done, 4 trained elsewhere; best: ...'."""
    line = re.search(r"^sweep: \d+ runs: (.*); best:", output, re.M).group(1)
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"(\d+) ([a-z ]+)", line)}


def test_three_drivers_on_one_grid_train_each_run_once(tmp_path, trainings, hold):
    store = tmp_path / "results"
    args = ["-m", *CLAIMED_GRID, SIX_LRS, f"results_dir={store}"]
    held = hold(step=2)  # each driver's first run waits mid-training until all three have planned theirs
    with Sweep(args, tmp_path) as a, Sweep(args, tmp_path) as b, Sweep(args, tmp_path) as c:
        assert len({pid for pid, _ in held.wait(3, sweeps=(a, b, c))}) == 3  # three runs held at once, in three workers
        held.release()
        codes = [s.wait(timeout=600) for s in (a, b, c)]
        outputs = [s.output for s in (a, b, c)]
    assert codes == [0, 0, 0], "\n\n".join(o[-2000:] for o in outputs)
    results = {p.parent.name: json.loads(p.read_text()) for p in store.glob("*/result.json")}
    assert len(results) == 6 and {r["status"] for r in results.values()} == {"done"}
    assert per_run(trainings()) == {name: 1 for name in results}  # 6 trainings in all, one a run
    counts = [summary_counts(o) for o in outputs]
    # each driver reports all six: those it trained, and the others' results as they landed
    assert all(c.get("done", 0) + c.get("trained elsewhere", 0) == 6 for c in counts), counts
    assert sum(c.get("done", 0) for c in counts) == 6, counts
    assert not list(store.glob("*/claim.json"))  # every claim released


def test_a_grid_and_an_optuna_study_on_one_store_train_each_run_once(tmp_path, trainings, hold):
    store = tmp_path / "results"
    grid = ["-m", *CLAIMED_GRID, "train.lr=1e-3,2e-3,3e-3,4e-3", f"results_dir={store}"]
    study = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=4",
             "train.lr=choice(1e-3,2e-3,3e-3,4e-3)", *CLAIMED_GRID, f"results_dir={store}"]
    held = hold(step=2)  # a run of each waits mid-training until both have started one
    with Sweep(grid, tmp_path) as a, Sweep(study, tmp_path) as b:
        held.wait(2, sweeps=(a, b))
        held.release()
        codes = [a.wait(timeout=600), b.wait(timeout=600)]
        outputs = [a.output, b.output]
    assert codes == [0, 0], "\n\n".join(o[-2000:] for o in outputs)
    results = {p.parent.name: json.loads(p.read_text()) for p in store.glob("*/result.json")}
    assert len(results) == 4 and {r["status"] for r in results.values()} == {"done"}
    assert per_run(trainings()) == {name: 1 for name in results}
    study_db = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{store / 'optuna.db'}")[0],
                                 storage=f"sqlite:///{store / 'optuna.db'}")
    told = [t for t in study_db.trials if t.state == TrialState.COMPLETE]
    assert len(told) == 4  # the study has all four values, whoever trained them
    values = {t.params["train.lr"]: t.value for t in told}
    by_lr = {r["config"]["train"]["lr"]: r["objective"]["value"] for r in results.values()}
    assert values == pytest.approx(by_lr)


def test_a_single_run_that_a_sweep_trains_now_is_refused_in_one_line(tmp_path, trainings, hold):
    store = tmp_path / "results"
    run = [*TINY_TOPICS, f"results_dir={store}"]
    held = hold(step=2)  # the sweep's run waits mid-training until the single run has been refused
    with Sweep(["-m", *run], tmp_path) as sweep:
        held.wait(sweeps=(sweep,))
        single = launch(run, cwd=tmp_path, env=NOT_HELD)  # trained here (claims broken), it fails, not hangs
        held.release()
        assert sweep.wait(timeout=300) == 0
    assert single.returncode == 1
    assert re.search(r"^error: .*-[0-9a-f]{16} is being trained by pid \d+ on \S+, since [\d:]+; not started "
                     r"here", single.stderr, re.M), single.stderr[-2000:]
    no_traceback(single.stderr)
    assert list(per_run(trainings()).values()) == [1]


def test_a_claim_left_by_a_killed_sweep_is_taken_over_and_said(tmp_path, trainings, hold):
    store = tmp_path / "results"
    args = ["-m", *TINY_TOPICS, f"results_dir={store}"]
    held = hold(step=2)  # killed mid-training
    with Sweep(args, tmp_path) as sweep:
        held.wait(sweeps=(sweep,))
        workers = sweep.workers()
        os.killpg(sweep.proc.pid, signal.SIGKILL)  # driver and worker at once: nobody releases the claim
        sweep.wait()
    wait_gone(workers.values())
    left = list(store.glob("*/claim.json"))
    assert len(left) == 1 and not (left[0].parent / "result.json").exists()
    pid = json.loads(left[0].read_text())["pid"]
    held.release()
    again = launch(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"took over the claim of pid {pid} on {socket.gethostname()}, which is gone" in again.stdout + again.stderr
    assert json.loads((left[0].parent / "result.json").read_text())["status"] == "done"
    assert not left[0].exists()
    assert list(per_run(trainings()).values()) == [2]  # the killed training, and the one that finished


def test_a_worker_s_death_recorded_late_leaves_the_result_of_the_process_that_trained_the_run_since(
        tmp_path, monkeypatch, hold):
    """Driver A's worker is killed under its run while driver B waits for it. A deletes the dead claim
    and, stalled (a hook: 8 s), only then records the run failed; meanwhile B trains the run, free once
    the claim went, and writes it done. A's late record must not overwrite B's result. Before, it did:
    a 200-fault chaos soak (seed 20261211) found one run so, its done result lost and trained again."""
    store = tmp_path / "results"
    run = ["-m", *TINY_TOPICS, f"results_dir={store}"]
    held = hold(step=2)
    with_hooks(monkeypatch, LORASWEEP_SLOW_RECORD="8")
    with Sweep(run, tmp_path) as a:
        [(pid, [name])] = held.wait(sweeps=(a,))
        monkeypatch.setenv("LORASWEEP_HOLD", "")  # B's run trains unheld
        with Sweep(run, tmp_path) as b:
            wait_until(lambda: "being trained by" in b.output, "B waiting for A's run", timeout=300)
            os.kill(pid, signal.SIGKILL)
            assert b.wait(timeout=300) == 0, b.output[-3000:]
            a.wait(timeout=300)
    held.release()
    assert statuses(store) == {name: "done"}, a.output[-3000:]


# an Optuna study whose storage is outside its results store (a database server, or a file elsewhere):
# a store holding an open SQLite file for writing cannot be remounted read-only
OPTUNA_2 = ["hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=2", "lora.r=choice(2,4)",
            "hydra.sweeper.storage=sqlite:///{tmp}/optuna.db"]


@pytest.mark.parametrize("sweep", [["lora.r=2,4"], ["lora.r=2,4", "hydra.launcher.pack=true"], OPTUNA_2],
                         ids=["alone", "pack", "optuna"])
def test_claims_the_store_kept_for_a_moment_at_the_runs_end_are_gone_when_the_sweep_ends(tmp_path, monkeypatch, sweep):
    """The store is read-only for the moment each claim is released, 0.5 s from a run's result written
    or a study's end (a chaos soak's read-only fault left a pack's 5 claims so): the runs end done,
    each says its claim could not be deleted, and once the sweep's workers have ended its driver
    deletes those claims, whose owners are gone; the Optuna driver's claim on its study, which nobody
    else deletes, is tried again until the store takes it. None outlives its owner. Before, the runs'
    claims stayed until a later sweep on the store, and the study's until its next driver."""
    with tmpfs(tmp_path / "results", size="8m") as store:
        with_hooks(monkeypatch, LORASWEEP_RO_AT_RELEASE=str(store))
        done = launch(["-m", *TINY_TOPICS, *(a.format(tmp=tmp_path) for a in sweep), f"results_dir={store}"],
                      cwd=tmp_path)
        said = done.stdout + done.stderr
        assert done.returncode == 0, said[-3000:]
        assert said.count("its claim could not be deleted (Read-only file system") == 2, said[-3000:]
        assert sorted(statuses(store).values()) == ["done", "done"]
        assert [str(p.relative_to(store)) for p in store.rglob("claim.json")] == []


def test_the_plan_view_shows_a_run_trained_elsewhere(tmp_path, trainings, hold):
    store = tmp_path / "results"
    run = [*TINY_TOPICS, "train.max_steps=40", f"results_dir={store}"]
    held = hold(step=2)  # the sweep's run waits after its first step until the plan has been shown
    with Sweep(["-m", *run], tmp_path) as sweep:
        held.wait(sweeps=(sweep,))
        plan = launch(["-m", *run, "hydra/launcher=plan"], cwd=tmp_path, env=NOT_HELD)
        held.release()
        assert sweep.wait(timeout=300) == 0
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert re.search(r"being trained by pid \d+ on \S+, since [\d:]+: step \d+/40, ", plan.stdout), plan.stdout
    # the worker has printed a step, so its progress file has one too (written at the first step), and a rate
    assert re.search(r"  running \(pid \d+ on \S+\) step \d+/40, ETA \S+$", plan.stdout, re.M), plan.stdout
    assert plan.stdout.strip().splitlines()[-1] == "total: 1 run: 1 running; 0 to run"


# ==============================================================================================

# Worker deaths, retries and interrupts
# ==============================================================================================

# A local sweep's workers are lorasweep's own processes (executors/local.py). The tests start real
# sweeps (conftest.Sweep: its own session, its workers watched) with their trainings counted
# (conftest.trainings: "<pid> <run folder>" per Trainer.train call), which is also how a test knows
# that a run trains, and in which worker.


def statuses(store: Path) -> dict[str, str]:
    """{run folder name: status} of the results in the store."""
    return {p.parent.name: json.loads(p.read_text())["status"] for p in store.glob("*/result.json")}


KILLED = re.compile(r"^run (\d)/4 .*: FAILED after \d+s: (worker killed by signal 9 \(SIGKILL\): likely out of memory; "
                    r"its peak RSS was \d+(\.\d)? [MG]iB)$", re.M)


def test_a_killed_worker_fails_its_run_only_and_is_replaced(tmp_path, trainings, hold):
    args = ["-m", "lora.r=2,4", "lora.proj=qk,v", "hydra.launcher.n_jobs=2", *TINY_ANY_STEPS, "train.max_steps=6"]
    store = tmp_path / "results"
    held = hold(step=2)  # every run waits mid-training until the killed one has been replaced
    with Sweep(args, tmp_path) as sweep:
        pid, [victim] = held.wait(sweeps=(sweep,))[0]
        assert pid in sweep.workers()  # one of this sweep's workers, training `victim`
        os.kill(pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
        sweep.wait_for_line(KILLED.pattern)
        # a new worker takes the next run beside the one still training
        wait_until(lambda: len(set(sweep.workers()) - {pid}) == 2, "two workers again")
        held.release()
        code = sweep.wait()
    out = sweep.output
    assert code == 1, out[-3000:]  # the failure fails the sweep, at its end
    assert "BrokenProcessPool" not in out and "Traceback" not in out, out[-3000:]
    assert "sweep: 4 runs: 3 done, 1 failed; best: " in out
    assert len(KILLED.findall(out)) == 1
    # the killed run is recorded failed with the cause; the run in flight beside it and the rest are done
    result = json.loads((store / victim / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == KILLED.search(out).group(2)
    assert result["memory"]["peak_rss_mb"] > 50 and not (store / victim / "traceback.txt").exists()
    assert not (store / victim / "claim.json").exists()  # the dead worker's claim went with its record
    assert statuses(store) == {**{name: "done" for name in statuses(store)}, victim: "failed"}
    assert len(statuses(store)) == 4
    assert per_run(trainings()) == {name: 1 for name in statuses(store)}  # none trained twice
    assert len(sweep.seen) == 3 and sweep.most == 2  # two workers, and one that replaced the killed one

    # a later command trains the failed run again, and only it
    again = launch(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 runs: 1 done, 3 already done; best: " in again.stderr
    assert set(statuses(store).values()) == {"done"}
    assert per_run(trainings()) == {**{name: 1 for name in statuses(store)}, victim: 2}


@pytest.fixture(scope="module")
def deaths_after_results(tmp_path_factory):
    """A 2-run grid in one worker, each worker killed (tests/hooks: LORASWEEP_KILL_AT) where its driver
    must tell what the run left from what was there before: run 1 runs out of accelerator memory at its
    first step, records that failure, and its worker dies right after; run 2 holds a pruned result
    from an earlier sweep (a grid trains it again) and its worker dies at its first step."""
    tmp = tmp_path_factory.mktemp("deaths")
    store = tmp / "results"
    runs = {r: [*TINY_ANY_STEPS, "train.max_steps=2", f"lora.r={r}"] for r in (2, 4)}
    folders = {r: folder_of(run, store) for r, run in runs.items()}
    plan = plan_run(compose_config(runs[4] + [f"results_dir={store}"]))
    write_result(folders[4], {"run_key": plan.spec.run_key, "slug": plan.spec.slug, "status": "pruned",
                              "reason": "stopped by the sweep's pruner at step 2", "config": plan.spec.defining(),
                              "curve": [{"step": 2, "accuracy": 0.125}]})
    with pytest.MonkeyPatch.context() as mp:
        with_hooks(mp, LORASWEEP_RAISE_OOM=f"{folders[2].name}@1",
                   LORASWEEP_KILL_AT=f"{folders[2].name}@result,{folders[4].name}@1")
        proc = launch(["-m", "lora.r=2,4", *TINY_ANY_STEPS, "train.max_steps=2", "hydra.launcher.n_jobs=1",
                       f"results_dir={store}"], cwd=tmp)
    return {"proc": proc, "folders": folders}


def test_a_worker_dying_after_its_run_recorded_a_failure_keeps_the_run_s_own_reason(deaths_after_results):
    proc, folder = deaths_after_results["proc"], deaths_after_results["folders"][2]
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = strict_json((folder / "result.json").read_text())
    # was the signal alone: the driver's record overwrote the reason the run had written just before
    assert result["status"] == "failed" and result["reason"] == f"AcceleratorMemoryError: {OOM_REASON}"
    assert "torch.OutOfMemoryError" in (folder / "traceback.txt").read_text()
    assert not (folder / "claim.json").exists()
    assert re.search(rf"^run 1/2 lora\.r=2: FAILED after \d+s: AcceleratorMemoryError: {re.escape(OOM_REASON)}; "
                     r"its worker then died: worker killed by signal 9 \(SIGKILL\)", proc.stderr, re.M), \
        proc.stderr[-3000:]


def test_a_worker_dying_under_its_run_is_not_reported_with_an_earlier_sweep_s_result(deaths_after_results):
    proc, folder = deaths_after_results["proc"], deaths_after_results["folders"][4]
    # was "run 2/2 lora.r=4: pruned": the earlier sweep's pruned result taken for what this run left
    assert re.search(r"^run 2/2 lora\.r=4: FAILED after \d+s: worker killed by signal 9 \(SIGKILL\)", proc.stderr,
                     re.M), proc.stderr[-3000:]
    assert "sweep: 2 runs: 2 failed; best: " in proc.stderr and "pruned" not in proc.stderr
    result = strict_json((folder / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"].startswith("worker killed by signal 9 (SIGKILL)")


def test_the_traceback_after_a_sweep_is_a_run_s_that_raised_not_one_said_in_full(tmp_path, monkeypatch):
    """Run 1's worker is killed (a failure said in full in its line: no traceback to show), run 2 raises
    an exception of its own: Hydra shows the first failed return's exception after the sweep, which was
    run 1's WorkerDiedError, with its own traceback, and not the one that explains run 2."""
    store = tmp_path / "results"
    folders = {r: folder_of([*TINY_ANY_STEPS, "train.max_steps=2", f"lora.r={r}"], store) for r in (2, 4)}
    with_hooks(monkeypatch, LORASWEEP_KILL_AT=f"{folders[2].name}@1", LORASWEEP_FAIL_AT=f"{folders[4].name}@1")
    proc = launch(["-m", "lora.r=2,4", *TINY_ANY_STEPS, "train.max_steps=2", "hydra.launcher.n_jobs=1",
                   f"results_dir={store}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "sweep: 2 runs: 2 failed; best: " in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"^run 1/2 lora\.r=2: FAILED after \d+s: worker killed by signal 9 \(SIGKILL\)", proc.stderr,
                     re.M), proc.stderr[-3000:]
    after = proc.stderr[proc.stderr.index("Traceback"):]
    assert f"RuntimeError: LORASWEEP_FAIL_AT: {folders[4].name} fails at step 1" in after, after[-3000:]
    assert "WorkerDiedError" not in after, after[-3000:]


SERVE = """
import multiprocessing, os, signal, sys
from lorasweep.executors import worker

driver, conn = multiprocessing.Pipe()
for task in (1, 2):
    driver.send((task, None, None))


class Swallows:
    def __del__(self):  # Python ignores what is raised here: as in a library's weakref callback
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs here, at a loop's check for signals
            pass


def run(job, log_file):
    print("run", flush=True)
    if sys.argv[1] != "stop swallowed":  # the driver dies while the run ends (SIGKILL: nothing is sent)
        driver.close()
    else:  # the SIGTERM of the driver's death lands where its Stopped is swallowed
        Swallows()
    return {"status": "done"}


worker.execute = run
worker.serve(conn, threads=1)
if sys.argv[1] == "sigterm as it ends":  # the driver's death's SIGTERM lands after serve saw its EOF: in
    os.kill(os.getpid(), signal.SIGTERM)  # multiprocessing's exit, in a real worker
    for _ in range(1000):
        pass
"""


@pytest.mark.parametrize("how", ["driver killed", "stop swallowed", "sigterm as it ends"])
def test_a_worker_whose_driver_is_gone_ends_quietly_after_its_run(tmp_path, how):
    """A driver killed outright (SIGKILL) sends its workers SIGTERM through the kernel (die_with_parent),
    which raises Stopped where the run is; raised in a __del__ or a weakref callback (SQLAlchemy's, in
    an Optuna trial) Python swallows it, the run ends and its result is written. The worker then ends,
    without a traceback for the driver it cannot reach, and takes no next run. The SIGTERM may land
    after the worker saw its driver gone (EOF) and left serve: it has nothing to stop then (it raised
    Stopped outside serve, a traceback in a 200-fault chaos soak's 2-worker grid)."""
    proc = subprocess.run([sys.executable, "-c", SERVE, how], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    # not even Python's note of the Stopped it swallowed (was: "Exception ignored in ..." and its traceback,
    # the 2 tracebacks of bench/chaos.py's 200-fault soak of 2026-12-06)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["run"]  # one run, not the next
    assert proc.returncode == (128 + signal.SIGTERM if how == "stop swallowed" else 0), proc.stderr[-3000:]


def test_retries_run_a_failed_run_again_but_never_a_diverged_one(tmp_path, trainings, monkeypatch):
    # the first training fails (tests/hooks: LORASWEEP_FAIL_ONCE); run 1 is the normal lr, run 2 diverges
    monkeypatch.setenv("LORASWEEP_FAIL_ONCE", str(tmp_path / "failed-once"))
    proc = launch(["-m", "train.lr=3e-2,1e4", "hydra.launcher.retries=2", *TINY_ANY_STEPS, "train.max_steps=8"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^run 1/2 train\.lr=0\.03: FAILED after \d+s: RuntimeError: LORASWEEP_FAIL_ONCE: the first "
                     r"training fails .*; retrying \(attempt 2 of 3\)$", proc.stderr, re.M), proc.stderr[-3000:]
    assert proc.stderr.count("retrying") == 1  # the diverged run is a result: never retried
    assert re.search(r"^run 2/2 train\.lr=10000\.0: diverged at step 3", proc.stderr, re.M)
    assert "sweep: 2 runs: 1 done, 1 diverged; best: " in proc.stderr
    results = statuses(tmp_path / "results")
    assert sorted(results.values()) == ["diverged", "done"]
    assert per_run(trainings()) == {name: 2 if status == "done" else 1 for name, status in results.items()}
    # the first attempt's traceback went with its failed result: nothing beside the done run says it failed
    assert not list((tmp_path / "results").glob("*/traceback.txt"))


def test_retries_in_an_optuna_sweep(tmp_path, trainings, monkeypatch):
    monkeypatch.setenv("LORASWEEP_FAIL_ONCE", str(tmp_path / "failed-once"))
    results = tmp_path / "results"
    proc = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "hydra.launcher.retries=1",
                   "lora.r=choice(2)", *TINY_TOPICS, f"results_dir={results}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^trial 1/1 lora\.r=2: failed: RuntimeError: LORASWEEP_FAIL_ONCE: .*; retrying \(attempt 2 of 2\)$",
                     proc.stderr, re.M), proc.stderr[-3000:]
    assert "1 complete, 0 pruned, 0 failed" in proc.stderr
    [trial] = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{results / 'optuna.db'}")[0],
                                storage=f"sqlite:///{results / 'optuna.db'}").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["status"] == "done"
    assert list(per_run(trainings()).values()) == [2] and list(statuses(results).values()) == ["done"]


def test_an_optuna_sweep_with_a_failed_trial_exits_1_as_a_grid_does(tmp_path, monkeypatch):
    # the first training fails (tests/hooks: LORASWEEP_FAIL_ONCE), no retries: trial 1 is told failed
    with_hooks(monkeypatch, LORASWEEP_FAIL_ONCE=str(tmp_path / "failed-once"))
    results = tmp_path / "results"
    proc = launch(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid",
                   "lora.r=choice(2,4)", *TINY_TOPICS, f"results_dir={results}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # was 0: a study whose trials all failed "succeeded"
    assert re.search(r"^trial 1/2 lora\.r=2: failed: RuntimeError: LORASWEEP_FAIL_ONCE: ", proc.stderr, re.M)
    assert "1 complete, 0 pruned, 1 failed, 0 over budget" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(statuses(results).values()) == ["done", "failed"]


@pytest.mark.parametrize("sweeper, value", [([], "-1"), ([], "1.5"), (["hydra/sweeper=optuna"], "two")])
def test_retries_must_be_a_whole_number_of_at_least_0(tmp_path, sweeper, value):
    space = "lora.r=choice(2,4)" if sweeper else "lora.r=2,4"
    proc = launch(["-m", *sweeper, space, f"hydra.launcher.retries={value}", *TINY_TOPICS], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    shown = {"-1": "-1", "1.5": "1.5", "two": "'two'"}[value]
    assert f"sweep: hydra.launcher.retries={shown} is invalid: it is how many more times a failed run is run again " \
        "within the same sweep, a whole number 0 or more (default 0); nothing was trained" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


@pytest.mark.parametrize("how", ["ctrl-c twice", "sigterm"])
def test_an_interrupted_parallel_sweep_stops_its_workers_and_leaves_nothing_half_done(tmp_path, trainings,
                                                                                      monkeypatch, hold, how):
    if how == "ctrl-c twice":  # an interrupted run takes 60 s to end (tests/hooks): only SIGKILL ends it sooner
        monkeypatch.setenv("LORASWEEP_SLOW_STOP", "60")
    # two runs take 2 steps; the other two take 30, and are held at their 3rd step (in Trainer.train, where
    # the slow stop of the hook applies) until the sweep is interrupted
    args = ["-m", "train.max_steps=2,30", "lora.r=2,4", "hydra.launcher.n_jobs=2", *TINY_ANY_STEPS]
    store = tmp_path / "results"
    held = hold(step=3)
    with Sweep(args, tmp_path) as sweep:
        held.wait(2, sweeps=(sweep,))  # both workers hold a 30-step run: the 2-step runs are done
        workers = sweep.workers()
        if how == "ctrl-c twice":  # the terminal signals its foreground process group: the workers ignore it
            os.killpg(sweep.proc.pid, signal.SIGINT)
            busy = int(sweep.wait_for_line(r"^sweep interrupted: stopping ([12]) runs? in flight "
                                           r"\(Ctrl-C again to kill (them|it) now\)$")[0].group(1))
            # the workers with a run end it (slowly, here) and are not killed yet; an idle one is gone
            wait_until(lambda: len(sweep.workers()) == busy, f"{busy} workers ending their runs")
            os.killpg(sweep.proc.pid, signal.SIGINT)
            sweep.wait_for_line(rf"^interrupted again: killing {busy} workers? now$")
        else:  # `kill` of the driver only: it stops its workers
            os.kill(sweep.proc.pid, signal.SIGTERM)
        code = sweep.wait(timeout=240)
    wait_gone(workers.values())
    out = sweep.output
    assert code == 130, out[-3000:]
    # stopped at once, not after the 30 s a worker is given (nor the hook's 60 s): said, not timed
    assert "after SIGTERM: killed" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]  # no KeyboardInterrupt in a worker: they ignore Ctrl-C
    stopped = int(re.search(r"^sweep interrupted: stopping (\d) runs? in flight", out, re.M).group(1))
    kept = len(re.findall(r"^run \d/4 .*: done, ", out, re.M))
    assert stopped + kept == 4 and stopped >= 1
    assert f"sweep interrupted: {kept} of 4 runs finished and kept; run the same command again to train the rest" in out
    assert len(sweep.seen) == 2  # no worker was started to replace a stopped one
    # an interrupted run wrote no result (not even failed) and no half of one
    results = statuses(store)
    assert set(results.values()) == {"done"} and len(results) == kept
    assert not list(store.rglob(".result-*.json"))
    interrupted = set(per_run(trainings())) - set(results)
    assert len(interrupted) == stopped
    # no run is left claimed by a live process: nothing keeps the next command waiting
    assert [live_holder(store / name) for name in interrupted] == [None] * stopped
    if how == "sigterm":  # each ended its run by an exception where it was: its `finally` blocks ran
        for name in interrupted:
            assert "stopped by the sweep (SIGTERM) before the run finished: no result written" \
                in (store / name / "log.txt").read_text()
            assert not (store / name / "claim.json").exists()  # released there

    monkeypatch.delenv("LORASWEEP_SLOW_STOP", raising=False)
    held.release()
    proc = launch(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep: 4 runs: {stopped} done, {kept} already done" in proc.stderr
    assert set(statuses(store).values()) == {"done"} and len(statuses(store)) == 4
    assert per_run(trainings()) == {name: 2 if name in interrupted else 1 for name in statuses(store)}


def test_a_driver_interrupted_while_its_idle_workers_end_says_so_in_one_line(tmp_path, monkeypatch, trainings):
    """SIGTERM reaches the driver after its last run, while it waits for its idle workers to end (here
    they linger: tests/hooks LORASWEEP_SLOW_EXIT). A chaos soak found a KeyboardInterrupt traceback
    there. Every run had ended: the workers are killed, that is said in one line, and the sweep ends as
    it would have (its summary, exit 0); the same command again trains nothing."""
    lingering = tmp_path / "lingering"
    with_hooks(monkeypatch, LORASWEEP_SLOW_EXIT=str(lingering))
    args = ["-m", "lora.r=2,4", "hydra.launcher.n_jobs=2", *TINY_TOPICS]
    with Sweep(args, tmp_path) as sweep:
        wait_until(lambda: lingering.exists(), "a worker told to end")
        os.kill(sweep.proc.pid, signal.SIGTERM)
        code = sweep.wait(timeout=120)
    out = sweep.output
    assert code == 0, out[-3000:]
    no_traceback(out)
    assert "sweep: interrupted while its idle workers ended; every run had ended, nothing was lost" in out
    assert "sweep: 2 runs: 2 done" in out
    wait_gone(sweep.seen.values())  # killed, not left to linger their 60 s
    again = launch(args, cwd=tmp_path, env={"LORASWEEP_SLOW_EXIT": ""})
    assert again.returncode == 0 and "sweep: 2 runs: 2 already done" in again.stderr, again.stderr[-3000:]
    assert len(per_run(trainings())) == 2 and set(per_run(trainings()).values()) == {1}


def test_a_worker_whose_runs_log_the_read_only_store_refuses_raises_the_stores_fault(tmp_path):
    """A run started while the store is read-only (a chaos soak found it): its worker cannot make the
    run's folder for its log. That is the store's fault, a StoreError naming the path (which stops the
    sweep in one line), not an OSError with a traceback."""
    from lorasweep.errors import StoreError
    from lorasweep.executors.job import Job
    from lorasweep.executors.worker import execute

    cfg = compose_config(TINY_TOPICS)
    with tmpfs(tmp_path / "store", size="1m") as store:
        read_only(store)
        folder = store / "run"
        with pytest.raises(StoreError) as raised:
            execute(Job.alone(cfg, folder), str(folder / "log.txt"))
        assert str(raised.value) == f"Read-only file system writing {folder}" and raised.value.whole_store


def test_a_store_read_only_for_a_moment_is_probed_again_once_it_is_writable(tmp_path):
    """A long-lived worker probed the store while it was read-only for a moment: the refusal is not
    kept, so its later runs train once the store is writable again. It was kept for the process's
    life, and a 200-fault chaos soak's grid had a worker fail its 5 later runs in 0 s each with "not
    writable" (then a traceback: the next test)."""
    with tmpfs(tmp_path / "store", size="1m") as store:
        read_only(store)
        with pytest.raises(UnwritableStoreError, match=r"is not writable: Read-only file system$"):
            check_writable(store)
        read_only(store, ro=False)
        check_writable(store)
        assert list(store.iterdir()) == []  # the probe's file went again


@pytest.mark.parametrize("pack", [False, True], ids=["alone", "pack"])
def test_a_sweep_s_run_that_finds_the_store_refused_raises_the_store_s_fault(tmp_path, pack):
    """In a sweep's worker (its driver found the store writable), a store that refuses now is the
    store's fault: a StoreError naming it and the cause, which stops the sweep in one line as a write
    the store refused does. It was the driver's own check's UnwritableStoreError, a config mistake's
    kind: each run failed with it, and the sweep ended in its traceback."""
    from lorasweep.errors import StoreError
    from lorasweep.run.pack import run_pack

    store = tmp_path / "store"
    cfgs = [compose_config([*TINY_TOPICS, f"lora.r={r}", f"results_dir={store}"]) for r in (2, 4)]
    with tmpfs(store, size="1m"):
        read_only(store)
        with pytest.raises(StoreError) as raised:
            run_pack(cfgs) if pack else run_config(cfgs[0], triaged=True)
    assert str(raised.value) == f"Read-only file system writing {store}" and raised.value.whole_store


def test_an_interrupted_optuna_sweep_stops_its_workers_and_is_continued(tmp_path, trainings, hold):
    """A closed terminal (SIGHUP) during an Optuna sweep with 2 trials in flight: the driver stops its
    workers as a grid's does, says what the study kept, exits 130; the same command finishes the study."""
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2", "lora.r=choice(2,4)", "train.max_steps=choice(2,8)", *TINY_ANY_STEPS]
    store = tmp_path / "results"
    held = hold(step=3)  # the 8-step trials wait at their 3rd step until the sweep is interrupted
    with Sweep(args, tmp_path) as sweep:
        held.wait(2, sweeps=(sweep,))  # both workers hold an 8-step trial
        workers = sweep.workers()
        os.kill(sweep.proc.pid, signal.SIGHUP)
        code = sweep.wait(timeout=240)
    wait_gone(workers.values())
    out = sweep.output
    assert code == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    told = int(re.search(r"^sweep interrupted: (\d) of 4 trials told and kept in the study; the trials in flight "
                         r"were stopped and are asked again when the same command runs again$", out, re.M).group(1))
    results = statuses(store)
    assert set(results.values()) <= {"done"} and len(results) == told
    assert not list(store.glob("*/claim.json"))  # the stopped runs released their claims
    before = per_run(trainings())

    held.release()
    again = launch(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(statuses(store).values()) == {"done"} and len(statuses(store)) == 4
    # the told trials' runs are not trained again; every other run once more
    assert per_run(trainings()) == {name: before.get(name, 0) + (name not in results) for name in statuses(store)}
