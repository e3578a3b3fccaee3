"""hydra.launcher.pack=auto (sweep/pack_auto.py): a group of compatible runs packs only where the
plan predicts that it pays. Its choice from predicted costs, its decisions on the default grid and on
a short-run grid (real predictions of the embedded default, cold), what the plan view and a sweep
say (on a GPU, faked: the plan predicts for one, the runs train on this CPU), and the settings it
refuses."""
from __future__ import annotations

import json
import re

import pytest
from conftest import TINY_TOPICS, compose_config, launch

from lorasweep.errors import ConfigError
from lorasweep.run.calibration import machine_fingerprint
from lorasweep.run.cost import Cost, Work
from lorasweep.run.plan import plan_run
from lorasweep.sweep.pack_auto import MIN_GAIN, choose, unit_memory_mb
from lorasweep.sweep.packs import AUTO, optuna_pack_size, pack_size
from lorasweep.sweep.predicted import Where, run_cost

DESIGN = [f"lora.r={r} lora.proj={p}".split() for r in (4, 8, 16) for p in ("qk", "qkvo", "qvkogdu")]


def cost(train_s: float, setup_s: float = 1.0, load_s: float = 4.0, peak_mb: float = 1000.0,
         device: str = "cpu") -> Cost:
    """A run's predicted cost: `train_s` of work, a fixed cost of setup_s (a pack's runs each pay it)
    + load_s (a pack pays it once)."""
    w = Work(steps=10, train_flops=1.0, eval_flops=1.0, test_flops=1.0, weights_mb=500.0, state_mb=0.0,
             activations_mb=peak_mb - 900.0, eval_mb=0.0, load_mb=0.0, device=device)
    return Cost(train_s=train_s, eval_s=0.0, test_s=0.0, load_s=load_s, peak_mb=peak_mb, device=device,
                basis="test", time_error=0.1, memory_error=0.1, work=w, setup_s=setup_s)


def test_runs_whose_model_load_dominates_pack_and_compute_bound_ones_train_alone():
    short = choose([cost(2.0)] * 8, slots=1, memory_mb=None)  # 7 s alone, 4 of them the load: one pack
    assert short.packs == 1 and short.alone_s == pytest.approx(8 * 7.0)
    assert short.packed_s == pytest.approx(4.0 + 8 * 1.0 + 1.06 * 16) and short.gain > MIN_GAIN

    long = choose([cost(100.0)] * 8, slots=1, memory_mb=None)  # on a CPU a pack steps 6% slower
    assert long.packs == 8 and long.gain < 1.0

    # on 2 slots the best split keeps both busy: 2 packs of 4
    assert choose([cost(2.0)] * 8, slots=2, memory_mb=None).packs == 2
    # on a GPU one small run leaves it idle: long runs pack too
    assert choose([cost(100.0, device="cuda")] * 8, slots=1, memory_mb=None).packs == 1


def test_a_pack_too_big_for_the_memory_is_split_and_none_that_fits_means_alone():
    runs = [cost(2.0, peak_mb=1000.0)] * 8  # a pack holds one base and runtime (900 MiB) and 100 MiB a run
    assert choose(runs, slots=1, memory_mb=None).packs == 1
    assert choose(runs, slots=1, memory_mb=1400.0).packs == 2  # 4 runs a pack: 1,300 MiB
    assert choose(runs, slots=1, memory_mb=1150.0).packs == 4  # 2 runs a pack: 1,100 MiB
    alone = choose(runs, slots=1, memory_mb=1050.0)
    assert alone.packs == 8 and alone.reason == "no pack of 2 or more fits 1,050 MiB"


def test_a_gain_below_the_threshold_trains_alone():
    runs = [cost(5.0, setup_s=0.5, load_s=1.0)] * 2  # alone 13 s, packed 1.0 + 2 x 0.5 + 10.6 s: 1.03x
    choice = choose(runs, slots=1, memory_mb=None)
    assert choice.packs == 2 and choice.split == 1 and choice.gain == pytest.approx(13 / 12.6)


def test_runs_whose_setup_is_most_of_their_time_gain_little_from_a_pack():
    """A pack sets up each run as alone (its data, its Trainer, its saving): only the load is saved."""
    choice = choose([cost(0.5, setup_s=4.0, load_s=0.5)] * 4, slots=1, memory_mb=None)  # 5 s alone each
    assert choice.packs == 4 and choice.gain == pytest.approx(20 / (0.5 + 16 + 1.06 * 2))


def test_a_run_without_a_prediction_keeps_its_group_alone():
    choice = choose([cost(2.0), None, cost(2.0)], slots=1, memory_mb=None)
    assert choice.packs == 3 and choice.reason == "a run's cost cannot be predicted here"


@pytest.mark.parametrize("steps, n_jobs, packs", [(0, 1, 9), (0, 2, 9), (30, 1, 9), (30, 2, 9)])
def test_auto_on_a_cpu_trains_the_default_grid_and_a_short_run_grid_alone(tmp_path, steps, n_jobs, packs):
    """The design card on the embedded default, predicted cold on this machine's 2 cores. Measured
    (bench/RESULTS.md section 19): packed, the 250-step grid took 0.68-0.74x the time of the best
    unpacked sweep, the 30-step grid 0.82x (1.04x on one worker): a pack's runs are set up each as
    alone, and a worker keeps its model loaded from run to run, so there is little a pack saves."""
    extra = [f"train.max_steps={steps}"] if steps else []
    cfgs = [compose_config(d + extra + [f"results_dir={tmp_path}"]) for d in DESIGN]
    where = Where("cpu", machine_fingerprint(), 2 // n_jobs, n_jobs)
    choice = choose([run_cost(plan_run(c), tmp_path, where) for c in cfgs], n_jobs, unit_memory_mb(where))
    assert choice.packs == packs, choice


def test_pack_auto_is_a_setting_of_grids_only():
    assert pack_size("auto") == AUTO and pack_size("AUTO") == AUTO
    with pytest.raises(ConfigError, match="auto needs a grid"):
        optuna_pack_size("auto")
    with pytest.raises(ConfigError, match=r"hydra.launcher.pack='sometimes' is invalid: .*auto \(packs where"):
        pack_size("sometimes")


ON_A_GPU = {"LORASWEEP_FAKE_GPUS": "1"}  # the plan predicts for a GPU (cold); the runs train on this CPU


def test_the_plan_view_says_what_auto_chose_and_why(tmp_path):
    plan = launch(["-m", "lora.r=2,4", "lora.proj=qk,qkvo", *TINY_TOPICS, "hydra.launcher.pack=auto",
                   "hydra/launcher=plan"], cwd=tmp_path, env=ON_A_GPU)
    assert plan.returncode == 0, plan.stderr[-3000:]
    # 4 tiny runs of 4 steps on a GPU: a model load each is most of them
    assert "pack=auto: 4 runs of tiny-bert on wordnet_topics (4 steps): 1 pack (predicted " in plan.stdout
    rows = [line for line in plan.stdout.splitlines() if line.startswith("lora.r=")]
    assert len(rows) == 4 and all(row.endswith("pack 1 of 1 (4 runs)") for row in rows)

    dora = launch(["-m", "method=lora,full", *TINY_TOPICS, "hydra.launcher.pack=auto", "hydra/launcher=plan"],
                  cwd=tmp_path, env=ON_A_GPU)
    assert dora.returncode == 0, dora.stderr[-3000:]
    rows = {line.split()[0]: line for line in dora.stdout.splitlines() if line.startswith("method=")}
    assert rows["method=lora"].endswith("alone: no other run to pack it with")
    assert rows["method=full"].endswith("alone: method=full (packs hold lora, rslora, dora)")
    assert "pack=auto:" not in dora.stdout  # no group of 2 or more to decide for

    cpu = launch(["-m", "lora.r=2,4", "lora.proj=qk,qkvo", *TINY_TOPICS, "hydra.launcher.pack=auto",
                  "hydra/launcher=plan"], cwd=tmp_path)
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    assert re.search(r"pack=auto: 4 runs of tiny-bert on wordnet_topics \(4 steps\): alone \(predicted \S+ in 1 pack "
                     r"against \S+ alone: 1\.0\dx; packs pay from 1\.10x\)", cpu.stdout), cpu.stdout


def test_a_sweep_with_pack_auto_trains_the_runs_it_chose_to_pack_together(tmp_path):
    proc = launch(["-m", "lora.r=2,4", "lora.proj=qk,qkvo", *TINY_TOPICS, "hydra.launcher.pack=auto"], cwd=tmp_path,
                  env=ON_A_GPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: pack=auto: 4 runs of tiny-bert on wordnet_topics (4 steps): 1 pack (predicted " in proc.stderr
    assert "pack of 4 runs started: " in proc.stderr and "sweep: 4 runs: 4 done" in proc.stderr
    found = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]
    assert len(found) == 4 and {r["pack"]["size"] for r in found} == {4}
