"""lorasweep.sweep.compose.JobConfigs: a job composed from the first job's config plus value changes equals Hydra's own composition."""
from __future__ import annotations

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode

from conftest import ROOT
from lorasweep.sweep.compose import JobConfigs, plain_config

JOBS = [
    ["lora.r=2", "lora.proj=qk", "train.lr=0.1"],
    ["lora.r=4", "lora.proj=v", "train.lr=0.2"],            # values only: copied from the first job
    ["lora.r=4", "lora.proj=v", "train.lr=0.2", "method=dora"],  # another key set: composed
    ["lora.r=8", "lora.proj=qkvo", "train.lr=0.3", "method=full"],  # a group changes: composed
    ["lora.r=16", "lora.proj=qkvo", "train.lr=0.3", "method=full"],  # values again, on the new base
]


def test_job_configs_equal_hydra_composition():
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    master = loader.load_configuration("config", overrides=["hydra/launcher=plan"], run_mode=RunMode.MULTIRUN)
    composed = []
    original = loader.load_sweep_config

    def counting(master_config, sweep_overrides):
        composed.append(sweep_overrides)
        return original(master_config, sweep_overrides)

    loader.load_sweep_config = counting
    configs = JobConfigs(loader, master)
    for overrides in JOBS:
        node, plain = configs(overrides)
        expected = original(master, overrides)
        assert plain == plain_config(expected), overrides
        assert list(node.hydra.overrides.task) == overrides
        assert node.hydra.job.override_dirname == expected.hydra.job.override_dirname
    assert plain["method"] == {"name": "full"} and plain["lora"]["r"] == 16 and plain["train"]["lr"] == 0.3
    assert composed == [JOBS[0], JOBS[2], JOBS[3]]  # the other two were not composed from scratch
