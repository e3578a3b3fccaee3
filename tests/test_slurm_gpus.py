"""SLURM jobs follow the local workers' GPU rules (lorasweep.executors.slurm_gpus): a job trains one
run and asks for exactly the GPUs that run uses. The test cluster has no GPU, so what is tested is
the refusal (before anything is submitted: no cluster needed) and the parameters submitit gets."""
import shlex

import pytest
import submitit

from conftest import TINY_TOPICS, launch
from lorasweep.errors import ConfigError
from lorasweep.executors.slurm import SlurmSettings
from lorasweep.executors.slurm_gpus import gres_gpus


@pytest.mark.parametrize("gres, count", [
    ("gpu", 1), ("gpu:1", 1), ("gpu:4", 4), ("gpu:a100:2", 2), ("gpu:a100", 1), ("gpu:0", 0),
    ("shard:2", None), ("mps:50", None), ("gpu:a100:2(S:0-1)", None), (None, None), ("", None),
    ("gpu:a100:1,shard:2", 1),
])
def test_gres_gpu_count(gres, count):
    assert gres_gpus(gres) == count


@pytest.mark.parametrize("settings, params", [
    ({"gres": "gpu:1"}, {"gres": "gpu:1"}),                                 # slurm.yaml's default
    ({"gres": None, "gpus_per_node": 1}, {"gpus_per_node": 1}),
    ({"gres": "gpu:a100:1", "gpus_per_run": 1}, {"gres": "gpu:a100:1"}),
    ({"gres": "shard:2"}, {"gres": "shard:2"}),                              # not gpu-countable: as it is
    ({"gres": "gpu:a100:2(S:0-1)"}, {"gres": "gpu:a100:2(S:0-1)"}),
    ({"gres": None}, {}),                                                    # a CPU job
    ({"gres": None, "gpus_per_node": 2, "gpus_per_run": 2}, {"gpus_per_node": 2}),  # one run, data-parallel on 2
    ({"gres": "gpu:a100:4", "gpus_per_run": 4}, {"gres": "gpu:a100:4"}),
])
def test_a_job_asks_for_the_gpus_its_run_uses(tmp_path, settings, params):
    got = SlurmSettings.from_config({"partition": "gpu", **settings}).sbatch_parameters()
    gpu_keys = {k: v for k, v in got.items() if k in ("gres", "gpus_per_node", "gpus_per_run", "runs_per_gpu")}
    assert gpu_keys == params  # gpus_per_run and runs_per_gpu are ours: never sbatch options
    executor = submitit.SlurmExecutor(folder=tmp_path)
    executor.update_parameters(**got)  # submitit takes every one of them (it refuses unknown names)
    script = executor._make_submission_file_text("true", "uid")
    for name, value in params.items():
        assert f"#SBATCH --{name.replace('_', '-')}={shlex.quote(str(value))}" in script


@pytest.mark.parametrize("settings, message", [
    ({"gpus_per_node": 4}, "hydra.launcher.gpus_per_node=4 asks each SLURM job for 4 GPUs, but a job trains one "
     "run, which uses hydra.launcher.gpus_per_run=1: the other 3 would sit idle; set hydra.launcher.gpus_per_node=1, "
     "or hydra.launcher.gpus_per_run=4 to train each run on all 4"),
    ({"gres": "gpu:a100:4"}, "hydra.launcher.gres=gpu:a100:4 asks each SLURM job for 4 GPUs, but a job trains one "
     "run, which uses hydra.launcher.gpus_per_run=1: the other 3 would sit idle; set hydra.launcher.gres=gpu:a100:1, "
     "or hydra.launcher.gpus_per_run=4 to train each run on all 4"),
    ({"gres": "gpu:2,shard:1"}, "set hydra.launcher.gres=gpu:1,shard:1, or hydra.launcher.gpus_per_run=2 "),
    ({"gres": None, "gpus_per_node": 1, "gpus_per_run": 2}, "hydra.launcher.gpus_per_node=1 asks each SLURM job for "
     "1 GPU, but a job trains one run, which uses hydra.launcher.gpus_per_run=2: its 2 data-parallel ranks need a "
     "GPU each; set hydra.launcher.gpus_per_node=2, or hydra.launcher.gpus_per_run=1 to train each run on 1"),
    ({"gres": None, "gpus_per_run": 2}, "hydra.launcher.gpus_per_run=2 trains each run data-parallel on 2 GPUs, "
     "but the SLURM jobs ask for none; set hydra.launcher.gpus_per_node=2 (or gres=gpu:2)"),
    ({"runs_per_gpu": 2}, "hydra.launcher.runs_per_gpu=2 is not supported on SLURM: each job trains one run on the "
     "GPU(s) SLURM gives that job alone; use 1 (default), or hydra/launcher=local on a GPU machine to share its "
     "GPUs between runs"),
    ({"gpus_per_node": 0}, "hydra.launcher.gpus_per_node=0 is invalid: it is how many GPUs each SLURM job asks for"),
    ({"gpus_per_run": 0}, "hydra.launcher.gpus_per_run=0 is invalid: it is how many GPUs each run gets"),
    ({"gpu_per_node": 1}, "hydra.launcher: unknown SLURM setting(s) ['gpu_per_node']; valid: "),
])
def test_a_gpu_ask_the_run_would_not_use_is_refused(settings, message):
    with pytest.raises(ConfigError) as e:
        SlurmSettings.from_config({"gres": "gpu:1", **settings})
    assert message in str(e.value)


@pytest.mark.parametrize("args, message", [
    (["hydra.launcher.gpus_per_node=4", "hydra.launcher.gres=null"],
     "sweep: hydra.launcher.gpus_per_node=4 asks each SLURM job for 4 GPUs, "),
    (["hydra.launcher.gres=gpu:2"], "sweep: hydra.launcher.gres=gpu:2 asks each SLURM job for 2 GPUs, "),
])
def test_the_sweep_refuses_it_before_submitting_anything(tmp_path, args, message):
    """hydra/launcher=slurm as a user runs it: no sbatch is called, so no cluster is needed."""
    proc = launch(["-m", "lora.r=2,4", *TINY_TOPICS, "hydra/launcher=slurm", *args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = next(line for line in proc.stderr.splitlines() if line.startswith("sweep: hydra."))
    assert line.startswith(message) and line.endswith("; nothing was submitted")
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


def test_the_optuna_sweep_on_slurm_refuses_it_too(tmp_path):
    proc = launch(["-m", *TINY_TOPICS, "hydra/sweeper=optuna", "lora.r=choice(2,4)", "hydra/launcher=slurm",
                   "hydra.launcher.gpus_per_node=2"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = next(line for line in proc.stderr.splitlines() if line.startswith("sweep: hydra."))
    assert line.startswith("sweep: hydra.launcher.gpus_per_node=2 asks each SLURM job for 2 GPUs, ")
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()
