"""lorasweep's entry point: compose the Hydra config and run it.

    python launch.py                                      # one run of the embedded default
    python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo   # a sweep

One run: Hydra calls main() below -> lorasweep.cli.main -> lorasweep.run.lifecycle.
A sweep (-m): Hydra hands the jobs to the sweeper and launcher plugins in src/hydra_plugins/ (chosen
in conf/config.yaml), which hand them to lorasweep.sweep; main() is not called for them.
docs/ARCHITECTURE.md draws both paths.
"""
import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lorasweep.cli import main as run_one  # after Hydra parsed the command line: fast --help

    return run_one(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
