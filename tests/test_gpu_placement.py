"""A GPU per local worker (lorasweep.executors.gpus), tested without a GPU: LORASWEEP_FAKE_GPUS=N
(a test hook, tests/hooks/fake_gpus.py) says N GPUs exist. Torch on a CPU ignores the CUDA_VISIBLE_DEVICES a worker gets, so
the real sweeps below train on the CPU and their results say which GPU each run was given."""
import json
from types import SimpleNamespace

import pytest

from conftest import TINY_TOPICS, launch
from lorasweep.errors import ConfigError
from lorasweep.executors.gpus import gpu_slots, place_workers, visible_gpus
from lorasweep.executors.local import LocalExecutor

TINY = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + ["train.max_steps=2"]


@pytest.mark.parametrize("env, expected", [
    ({"LORASWEEP_FAKE_GPUS": "0"}, []),
    ({"LORASWEEP_FAKE_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}, []),  # no GPU here: nothing to pin
    ({"LORASWEEP_FAKE_GPUS": "4"}, ["0", "1", "2", "3"]),
    ({"LORASWEEP_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),  # the user's subset, as written
    ({"LORASWEEP_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": " 3, 1"}, ["3", "1"]),
    ({"LORASWEEP_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": ""}, []),  # "" and -1: no GPU
    ({"LORASWEEP_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"LORASWEEP_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "1,-1,2"}, ["1"]),  # CUDA stops at an invalid id
])
def test_visible_gpus(env, expected, monkeypatch):
    env = dict(env)
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", env.pop("LORASWEEP_FAKE_GPUS"))  # the hook reads the process's
    assert visible_gpus(env) == expected


def test_slots_spread_over_the_gpus_first():
    assert gpu_slots(["0", "1"]) == ["0", "1"]
    assert gpu_slots(["0", "1"], runs_per_gpu=2) == ["0", "1", "0", "1"]
    assert gpu_slots(["0", "1", "2", "3", "4"], gpus_per_run=2) == ["0,1", "2,3"]


@pytest.mark.parametrize("n_jobs, runs_per_gpu, gpus, expected", [
    (None, 1, [], (1, None)),            # no GPU: as before, one run at a time by default
    (3, 1, [], (3, None)),               # ... and n_jobs as given; runs_per_gpu does not apply
    (None, 1, ["0", "1"], (2, ["0", "1"])),  # default: one worker per GPU
    (1, 1, ["0", "1"], (1, ["0"])),
    (None, 2, ["0"], (2, ["0", "0"])),
    (3, 2, ["4", "6"], (3, ["4", "6", "4"])),
    (2.0, 1, ["0", "1"], (2, ["0", "1"])),
])
def test_place_workers(n_jobs, runs_per_gpu, gpus, expected):
    assert place_workers(n_jobs, runs_per_gpu, 1, gpus=gpus) == expected


def test_more_runs_in_flight_than_gpu_slots_is_refused():
    with pytest.raises(ConfigError) as e:
        place_workers(3, 1, 1, gpus=["0", "1"])
    assert str(e.value) == (
        "hydra.launcher.n_jobs=3 is more than this machine's 2 GPU slots (2 GPUs 0,1 x hydra.launcher.runs_per_gpu=1): "
        "runs would share a GPU unasked; set hydra.launcher.n_jobs to 2 or less, or hydra.launcher.runs_per_gpu=2 "
        "to share each GPU between that many runs")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.n_jobs=2 is more than this machine's 1 GPU slot "):
        place_workers(2, 1, 1, gpus=["0"], n_jobs_field="hydra.sweeper.n_jobs")


@pytest.mark.parametrize("field, value", [("n_jobs", 0), ("n_jobs", -1), ("n_jobs", 1.5), ("runs_per_gpu", 0),
                                          ("runs_per_gpu", "two"), ("runs_per_gpu", True), ("gpus_per_run", 0)])
def test_invalid_values_are_refused_naming_the_field(field, value):
    settings = {"n_jobs": None, "runs_per_gpu": 1, "gpus_per_run": 1, field: value}
    for gpus in ([], ["0"]):  # checked alike with and without a GPU
        with pytest.raises(ConfigError) as e:
            place_workers(settings["n_jobs"], settings["runs_per_gpu"], settings["gpus_per_run"], gpus=gpus)
        assert str(e.value).startswith(f"hydra.launcher.{field}={value!r} is invalid: it is ")
        assert ", a whole number 1 or more (default " in str(e.value)


def test_a_run_with_several_gpus_gets_a_slot_of_that_many():
    assert place_workers(None, 1, 2, gpus=["0", "1", "2", "3", "4"]) == (2, ["0,1", "2,3"])  # GPU 4 left over


@pytest.mark.parametrize("gpus, have", [([], "no GPU"), (["3"], "only 1 GPU (3)")])
def test_more_gpus_per_run_than_the_machine_has_is_refused(gpus, have):
    with pytest.raises(ConfigError) as e:
        place_workers(None, 1, 2, gpus=gpus)
    assert str(e.value) == (f"hydra.launcher.gpus_per_run=2 needs 2 GPUs for each run, and this machine has {have} "
                            f"(nvidia-smi, CUDA_VISIBLE_DEVICES); use 1")


def test_a_new_worker_takes_the_slot_no_live_worker_holds():
    executor = LocalExecutor.__new__(LocalExecutor)  # its slot bookkeeping only: no watcher, no processes
    executor.gpus = ["0", "1", "0", "1"]  # runs_per_gpu=2 on 2 GPUs
    executor._workers = [SimpleNamespace(gpus=g) for g in ("0", "1", "0")]
    assert executor._free_gpus() == "1"
    executor._workers.pop(0)  # the worker on GPU 0 died
    assert executor._free_gpus() == "0"
    executor.gpus = None  # no GPU here: workers are not pinned
    assert executor._free_gpus() is None


def stored(tmp_path):
    return [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]


@pytest.mark.parametrize("fake, user, launcher, expected", [
    ("2", None, [], ["0", "1"]),                                   # n_jobs null: one worker per GPU
    ("1", None, ["hydra.launcher.runs_per_gpu=2"], ["0", "0"]),   # two runs share the one GPU, as asked
    ("6", "3,5", ["hydra.launcher.n_jobs=2"], ["3", "5"]),          # the user's GPUs, never others
])
def test_each_worker_runs_on_its_own_gpu(tmp_path, monkeypatch, fake, user, launcher, expected):
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", fake)
    if user is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", user)
    proc = launch(["-m", "lora.r=2,4", *TINY, *launcher], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 2 runs: 2 done" in proc.stderr
    results = stored(tmp_path)
    assert sorted(r["env"]["cuda_visible_devices"] for r in results) == expected
    assert {r["env"]["device"] for r in results} == {"cpu"}  # no GPU here: trained on the CPU all the same
    assert len(list((tmp_path / "results").glob("*/log.txt"))) == 2  # two workers: each run's output in its log


@pytest.mark.parametrize("args, message", [
    (["lora.r=2,4", "hydra.launcher.n_jobs=3"], "sweep: hydra.launcher.n_jobs=3 is more than this machine's 2 GPU slots "),
    (["lora.r=2,4", "hydra.launcher.gpus_per_run=3"], "sweep: hydra.launcher.gpus_per_run=3 needs 3 GPUs for each run, "
     "and this machine has only 2 GPUs (0,1) "),
    (["hydra/sweeper=optuna", "lora.r=choice(2,4)", "hydra.sweeper.n_jobs=3"],  # the Optuna sweeper's workers too
     "sweep: hydra.sweeper.n_jobs=3 is more than this machine's 2 GPU slots "),
])
def test_a_placement_no_gpu_could_honour_is_refused_before_anything_trains(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("LORASWEEP_FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc = launch(["-m", *TINY, *args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = next(line for line in proc.stderr.splitlines() if line.startswith("sweep: hydra."))
    assert line.startswith(message) and line.endswith("; nothing was trained")
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()
