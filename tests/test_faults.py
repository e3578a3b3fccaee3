"""The fault tests of issue 13 ("Sweeps that survive"): what a run and a sweep do when the world
around them fails, as a user sees it (launch.py in a subprocess, asserting on its output, its exit
status and what it leaves in the results store).

Each kind of fault has its own section below; add a new kind as a new section.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from lorasweep.run.plan import plan_run
from lorasweep.run.store import write_result

from conftest import TINY_TOPICS, compose_config, launch


# =====================================================================================================
# The results store: a full disk, an unwritable store, an unreadable result
# =====================================================================================================
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


def read_only(where: Path) -> None:
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remounted.stderr.strip()}")


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


def test_full_disk_stops_a_grid_sweep_at_the_first_run_it_fails(tmp_path):
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
        if (failed / "result.json").exists():
            assert json.loads((failed / "result.json").read_text())["status"] == "failed"


# -- a results_dir that cannot be written ------------------------------------------------------------------

@pytest.fixture(params=["read-only mount", "under a regular file"])
def unwritable(request, tmp_path):
    """(results_dir, the cause the refusal names)."""
    if request.param == "under a regular file":
        (tmp_path / "a-file").write_text("not a folder\n")
        yield tmp_path / "a-file" / "results", "Not a directory"
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
        assert total.endswith(f"2 to run; results_dir={store} is not writable: Read-only file system"), total


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
    assert proc.stdout.strip().splitlines()[-1].endswith("0 already done, 0 with errors, 4 to run")


def test_unreadable_result_is_said_and_trained_again_in_a_sweep(tmp_path):
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
