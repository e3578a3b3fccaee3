"""Packed sweeps as a user runs them: `python launch.py -m ... hydra.launcher.pack=true|K`.

Real tiny runs in real worker processes; tests/test_pack.py shows that a packed run's result is the
one it has alone, these show what the sweep does with packs: which runs it packs, what it says,
what each result records, and that reruns, interruptions and killed workers lose nothing.
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import (TINY_TOPICS, WORKER_FLAG, Sweep, compose_config, counted_trainings, launch, per_run, wait_gone,
                      wait_until, with_hooks)

from lorasweep.run import memory
from lorasweep.run.claims import live_holder

GRID = ["-m", "lora.r=2,4", "lora.proj=qk,qkvo", *TINY_TOPICS]
# 30 steps of 0.3 s: a pack still trains when the test interrupts it, even on a loaded machine
SLOW = ["-m", "lora.r=2,4", "lora.proj=qk,qkvo", *[a for a in TINY_TOPICS if not a.startswith("train.max_steps=")],
        "train.max_steps=30", "hydra.launcher.pack=true", "train.step_sleep_s=0.3"]


def results(store: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(store.glob("*/result.json"))}


def test_a_packed_grid_trains_its_runs_together_and_a_rerun_trains_nothing(tmp_path):
    proc = launch([*GRID, "hydra.launcher.pack=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("pack of 4 runs started: run 1/4 lora.r=2 lora.proj=qk; run 2/4 lora.r=2 lora.proj=qkvo; "
            "run 3/4 lora.r=4 lora.proj=qk; run 4/4 lora.r=4 lora.proj=qkvo") in proc.stderr
    assert "sweep: 4 runs: 4 done; best: " in proc.stderr
    found = results(tmp_path / "results")
    assert len(found) == 4 and {r["status"] for r in found.values()} == {"done"}
    packs = {r["pack"]["id"] for r in found.values()}
    assert len(packs) == 1 and all(r["pack"]["size"] == 4 for r in found.values())
    assert sorted(next(iter(found.values()))["pack"]["runs"]) == sorted(r["run_key"] for r in found.values())
    for name, r in found.items():  # each run its own PEFT adapter, of its own rank and modules
        config = json.loads((tmp_path / "results" / name / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == r["config"]["lora"]["r"]
        assert sorted(config["target_modules"]) == sorted(r["params"]["adapted_modules"])
        assert (tmp_path / "results" / name / "adapter" / "adapter_model.safetensors").stat().st_size > 0
        assert [c["step"] for c in r["curve"]] == [0, 2, 4]
        assert not (tmp_path / "results" / name / "claim.json").exists()

    again = launch([*GRID, "hydra.launcher.pack=true"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 runs: 4 already done; best: " in again.stderr and "pack of" not in again.stderr


def test_pack_k_makes_packs_of_at_most_k_that_train_side_by_side(tmp_path):
    proc = launch([*GRID, "hydra.launcher.pack=2", "hydra.launcher.n_jobs=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = re.findall(r"^pack of 2 runs started \(log: (\S+)\): ", proc.stderr, re.M)
    assert len(started) == 2
    found = results(tmp_path / "results")
    assert sorted(r["pack"]["size"] for r in found.values()) == [2, 2, 2, 2]
    assert len({r["pack"]["id"] for r in found.values()}) == 2
    for log in started:  # each pack's output goes to its first run's log
        assert "2 runs trained together over one tiny-bert" in (tmp_path / log).read_text()


def test_runs_that_cannot_be_packed_train_alone_and_the_plan_says_why(tmp_path):
    args = ["-m", "method=lora,dora,full", *TINY_TOPICS, "hydra.launcher.pack=true"]
    plan = launch([*args, "hydra/launcher=plan"], cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = {line.split()[0]: line for line in plan.stdout.splitlines() if line.startswith("method=")}
    assert rows["method=lora"].endswith("pack 1 of 1 (2 runs)") and rows["method=dora"].endswith("pack 1 of 1 (2 runs)")
    assert rows["method=full"].endswith("alone: method=full (packs hold lora, rslora, dora)")

    proc = launch(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pack of 2 runs started: run 1/3 method=lora; run 2/3 method=dora" in proc.stderr
    assert "run 3/3 started: method=full" in proc.stderr
    found = {r["config"]["method"]: r for r in results(tmp_path / "results").values()}
    assert found["lora"]["pack"]["size"] == found["dora"]["pack"]["size"] == 2
    assert "pack" not in found["full"]

    replan = launch([*args, "hydra/launcher=plan"], cwd=tmp_path)  # nothing left to pack: no pack column
    assert replan.returncode == 0 and "pack" not in replan.stdout.splitlines()[1]


def test_a_compiled_run_packs(tmp_path):
    """train.compile=true compiles a pack's step (tests/test_pack_compile.py): the plan packs such runs."""
    from lorasweep.sweep.packs import why_alone

    assert why_alone(compose_config([*TINY_TOPICS, "train.compile=true"])) is None
    plan = launch(["-m", "lora.r=2,4", *TINY_TOPICS, "train.compile=true", "hydra.launcher.pack=true",
                   "hydra/launcher=plan"], cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = [line for line in plan.stdout.splitlines() if line.startswith("lora.r=")]
    assert len(rows) == 2 and all(row.endswith("pack 1 of 1 (2 runs)") for row in rows), plan.stdout


def test_a_run_only_ever_gets_its_own_outcome_from_a_task():
    """A restarted driver regroups the runs its SLURM jobs still hold and re-attaches each group to
    its first run's job. pack=2 sent [r1, r2] and [r3, r4]; r1 and r3 diverged; the restart sends
    [r2, r4] to job 1, whose result holds r1 and r2: r4 is sent again (to the job that holds it),
    never given r2's result. So for a job that trained its one run alone."""
    from concurrent.futures import Future

    from lorasweep.sweep.packs import per_run, to_resend

    def finished(result):
        future = Future()
        future.set_result(result)
        return future

    job1 = finished({"pack": [{"run_key": "r1", "status": "diverged"}, {"run_key": "r2", "status": "done"}]})
    r2, r4 = per_run(job1, ["r2", "r4"])
    assert r2.result() == {"run_key": "r2", "status": "done"} and not to_resend(r2)
    assert to_resend(r4)
    r1, r3 = per_run(finished({"run_key": "r1", "status": "done"}), ["r1", "r3"])
    assert r1.result() == {"run_key": "r1", "status": "done"} and to_resend(r3)
    alone = per_run(job1, ["r9"])[0]  # sent alone to the job its folder names, which lacks it: no resending loop
    assert "holds no outcome for run r9" in str(alone.exception())


def test_runs_that_differ_only_in_epochs_pack_when_max_steps_is_set():
    from lorasweep.sweep.packs import make_packs

    cfgs = {e: compose_config([*TINY_TOPICS, f"train.epochs={e}", f"lora.r={e + 1}"]) for e in (1, 3)}
    assert make_packs([1, 3], cfgs.get, 0) == [[1, 3]]  # max_steps=4: the Trainer ignores epochs
    cfgs = {e: compose_config([*TINY_TOPICS, "train.max_steps=-1", f"train.epochs={e}"]) for e in (1, 3)}
    assert make_packs([1, 3], cfgs.get, 0) == [[1], [3]]


def test_runs_that_differ_in_train_compile_go_to_different_packs():
    """The same run either way (compile is outside the run key), but a pack compiles its step or not as a
    whole: mixed, whether the compiled run compiled would hang on which run came first."""
    from lorasweep.sweep.packs import make_packs

    cfgs = {i: compose_config([*TINY_TOPICS, f"lora.r={r}", f"train.compile={c}"])
            for i, (r, c) in enumerate([(2, "true"), (4, "false"), (8, "true"), (16, "false")])}
    assert make_packs(list(cfgs), cfgs.get, 0) == [[0, 2], [1, 3]]


def test_a_tracked_run_packs():
    from lorasweep.sweep.packs import why_alone

    assert why_alone(compose_config([*TINY_TOPICS, "tracking=tensorboard"])) is None  # tests/test_tracking.py


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many"])
def test_pack_must_be_true_false_auto_or_a_whole_number_of_at_least_2(tmp_path, value):
    proc = launch([*GRID, f"hydra.launcher.pack={value}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"hydra.launcher.pack={value if value == 'many' else value}" in proc.stderr.replace("'", "")
    assert "true (every compatible run, split between the workers), auto (packs where they are predicted to pay), " \
           "false (each run alone, the default) or a whole number 2 or more; nothing was trained" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_an_interrupted_pack_leaves_no_result_and_trains_again_next_time(tmp_path, trainings):
    store = tmp_path / "results"
    ended = lambda: per_run(counted_trainings(tmp_path / "trainings.txt.finished"))  # noqa: E731  (tests/hooks)
    with Sweep(SLOW, tmp_path) as sweep:
        sweep.wait_for_line(r"^  pack step\s+2/30 ")
        workers = sweep.workers()
        os.killpg(sweep.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        code = sweep.wait(timeout=60)
    wait_gone(workers.values(), timeout=10)
    out = sweep.output
    assert code == 130, out[-3000:]
    assert "sweep interrupted: 0 of 4 runs finished and kept; run the same command again to train the rest" in out
    folders = [p for p in store.iterdir() if p.is_dir()]
    assert len(folders) == 4 and not results(store)  # started, none half done
    assert [live_holder(f) for f in folders] == [None] * 4
    # the pack's trainings are counted, one a run (it never calls Trainer.train): started, none ended
    assert per_run(trainings()) == {f.name: 1 for f in folders} and ended() == {}

    again = launch(SLOW[:-1], cwd=tmp_path)  # the same runs (the pause is not in the run key), trained now
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 runs: 4 done" in again.stderr
    assert {r["status"] for r in results(store).values()} == {"done"} and len(results(store)) == 4
    assert per_run(trainings()) == {f.name: 2 for f in folders} and ended() == {f.name: 1 for f in folders}


KILLED = r"worker killed by signal 9 \(SIGKILL\): likely out of memory; its peak RSS was \d+(\.\d)? [MG]iB"


def test_a_killed_pack_worker_fails_each_of_its_runs_with_the_cause(tmp_path):
    store = tmp_path / "results"
    with Sweep(SLOW, tmp_path) as sweep:
        sweep.wait_for_line(r"^  pack step\s+2/30 ")
        pid = next(iter(wait_until(sweep.workers, "the pack's worker")))
        os.kill(pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
        code = sweep.wait(timeout=60)
    out = sweep.output
    assert code == 1, out[-3000:]
    assert len(re.findall(rf"^run \d/4 .*: FAILED after \d+s: {KILLED}$", out, re.M)) == 4
    assert "sweep: 4 runs: 4 failed" in out and "Traceback" not in out
    found = results(store)
    assert len(found) == 4 and {r["status"] for r in found.values()} == {"failed"}
    assert all(re.fullmatch(KILLED, r["reason"]) for r in found.values())

    again = launch(SLOW[:-1], cwd=tmp_path)  # a later command trains them again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 runs: 4 done" in again.stderr


def test_a_pack_too_large_for_its_gpu_trains_in_smaller_packs_and_a_run_too_large_alone_fails_alone(tmp_path, monkeypatch):
    """A GPU that holds one run's step (LORASWEEP_PACK_HOLDS=1): the pack of 4 trains as 2 + 2, then
    as runs alone; the run that runs out of memory even alone (LORASWEEP_RAISE_OOM) fails as a run
    alone does, in one line with the settings that drive memory; the other three are done."""
    store = tmp_path / "results"
    with_hooks(monkeypatch, LORASWEEP_PACK_HOLDS="1", LORASWEEP_RAISE_OOM="lora-qkvo-r4-")
    proc = launch([*GRID, "hydra.launcher.pack=true", "hydra.launcher.n_jobs=1"], cwd=tmp_path)
    out = proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert len(re.findall(r"^pack-\w{8}: out of accelerator memory on cuda:0 \(it tried to allocate 2\.00 GiB\) "
                          r"with (4|2) runs; \1 train again, ", out, re.M)) == 3, out[-3000:]
    reason = f"out of accelerator memory on cuda:0 (it tried to allocate 2.00 GiB); {memory.hint('lora')}"
    folder = next(store.glob("*-lora-qkvo-r4-*"))
    failed = re.findall(r"^run \d/4 (.*): FAILED after \d+s: (.*)$", out, re.M)
    assert failed == [("lora.r=4 lora.proj=qkvo", f"{reason} (see {folder.relative_to(tmp_path)}/traceback.txt)")], out[-3000:]
    assert "sweep: 4 runs: 3 done, 1 failed" in out and "Traceback" not in out
    found = {(r["config"]["lora"]["r"], r["config"]["lora"]["proj"]): r for r in results(store).values()}
    assert found[(4, "qkvo")]["status"] == "failed" and found[(4, "qkvo")]["reason"] == f"AcceleratorMemoryError: {reason}"
    assert [found[k]["status"] for k in [(2, "qk"), (2, "qkvo"), (4, "qk")]] == ["done"] * 3


OPTUNA = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler=grid",
          "lora.r=choice(2,4)", "lora.proj=q,qv", *TINY_TOPICS]


def test_an_optuna_sweep_trains_its_trials_in_packs_of_k(tmp_path):
    import optuna

    store = tmp_path / "results"
    proc = launch([*OPTUNA, "hydra.launcher.pack=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"^trial \d/4 .*: started \(in a pack of 2, job \d\)$", proc.stderr, re.M)) == 4
    found = results(store)
    assert len(found) == 4 and {r["status"] for r in found.values()} == {"done"}
    assert sorted(r["pack"]["size"] for r in found.values()) == [2, 2, 2, 2]
    assert len({r["pack"]["id"] for r in found.values()}) == 2
    study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{store / 'optuna.db'}")[0],
                              storage=f"sqlite:///{store / 'optuna.db'}")
    told = {t.user_attrs["run_key"]: t for t in study.trials}
    assert {t.state.name for t in told.values()} == {"COMPLETE"}
    assert {key: t.value for key, t in told.items()} == {r["run_key"]: r["objective"]["value"] for r in found.values()}


def test_pack_true_is_refused_under_optuna(tmp_path):
    proc = launch([*OPTUNA, "hydra.launcher.pack=true"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.launcher.pack=true needs a grid, whose runs are known in advance" in proc.stderr
    assert "nothing was trained" in proc.stderr and not list(tmp_path.glob("results/*/result.json"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_pack_whose_worker_dies_reports_each_run_by_what_it_left(tmp_path, sig):
    """The pack's worker is killed (the out-of-memory killer's SIGKILL) or stopped (a SIGTERM from
    elsewhere) after its first run diverged, while its third is claimed by another process: the first
    keeps its diverged result, the third is said claimed (its driver waits for it), and only the
    second, still training, fails with the cause."""
    import psutil
    from lorasweep.config.spec import from_config
    from lorasweep.errors import WorkerDiedError
    from lorasweep.executors.local import LocalExecutor
    from lorasweep.executors.worker import claimed_by, pack_task
    from lorasweep.run.claims import Claim
    from lorasweep.run.store import run_dir
    from lorasweep.sweep.packs import per_run

    slow = [a for a in TINY_TOPICS if not a.startswith("train.max_steps=")] + \
        ["train.max_steps=30", "train.step_sleep_s=0.3", f"results_dir={tmp_path}"]
    cfgs = [compose_config([*slow, *run]) for run in (["lora.r=4", "train.lr=1e4"], ["lora.r=2"], ["lora.r=8"])]
    keys = [from_config(cfg).run_key for cfg in cfgs]
    folders = [run_dir(tmp_path, from_config(cfg).slug, key) for cfg, key in zip(cfgs, keys)]
    with Claim(folders[2]), LocalExecutor(n_jobs=1) as executor:
        task = executor.submit_many([pack_task(cfgs, folders)])[0]
        wait_until(lambda: (folders[0] / "result.json").exists(), "the first run's diverged result", timeout=120)
        worker = next(p for p in psutil.Process().children() if WORKER_FLAG in p.cmdline())
        os.kill(worker.pid, sig)
        diverged, died, claimed = per_run(task, keys)
    assert diverged.result()["status"] == "diverged" and diverged.result()["run_key"] == keys[0]
    assert isinstance(died.exception(), WorkerDiedError)
    assert re.fullmatch(KILLED if sig == signal.SIGKILL else
                        "worker stopped by SIGTERM before the run finished; it left no result", str(died.exception()))
    assert claimed_by(claimed).startswith("pid ") and not (folders[2] / "result.json").exists()
