"""Shared helpers: compose the project's real Hydra config, and run tiny end-to-end runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# No test may reach a model hub: on a machine with one, a test that names a hub model (qwen3-0.6b,
# say) would otherwise download it and train it. Set here, once, before anything imports
# huggingface_hub (it reads them at import; the test modules import it after this file): every test,
# and every launch() subprocess and SLURM job started from one (they inherit os.environ), is
# offline, and lorasweep fails fast with its "not in the local HF cache" message instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

# A tiny run: a few steps on a slice of the real data, in seconds.
TINY_TOPICS = ["model=tiny-bert", "task=wordnet_topics", "train.max_steps=4", "train.eval_steps=2",
               "task.max_train=32", "task.max_eval=16", "task.max_test=16", "train.batch_size=8"]
TINY_MCQ = ["model=tiny-qwen3", "task=wordnet_mcq", "train.max_steps=4", "train.eval_steps=2",
            "task.max_train=16", "task.max_eval=6", "task.max_test=8", "train.batch_size=4"]


def compose_config(overrides: list[str]) -> dict:
    """The fully resolved config launch.py would get for these command-line overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def launch(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python launch.py ARGS` as a user would, in `cwd`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM (tests/slurm_cluster.py), started once for the session and stopped,
    daemon by daemon (by PID), at its end. Where it cannot start: a failure in CI, a skip elsewhere."""
    import time

    import slurm_cluster as sc

    why = sc.missing_requirements()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the SLURM tests need their test cluster: {why}")
        pytest.skip(f"no test SLURM cluster here: {why}")
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.perf_counter()
    cluster = sc.start(state)
    print(f"\ntest SLURM cluster up in {time.perf_counter() - t0:.1f}s under {state}", file=sys.stderr)
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # launch() passes os.environ on: sbatch, sacct find this cluster
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        t0 = time.perf_counter()
        cluster.stop()
        shutil.rmtree(state / "db", ignore_errors=True)  # MariaDB's files: tens of MB, kept by pytest otherwise
        print(f"\ntest SLURM cluster stopped in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
