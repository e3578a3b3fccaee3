"""lorasweep's entry point: compose the Hydra config and run it.

    python launch.py                                      # one run of the embedded default
    python launch.py -m lora.r=4,8,16 lora.proj=qk,qkvo   # a sweep
"""
import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from lorasweep.cli import run_or_explain  # after Hydra parsed the command line: fast --help

    return run_or_explain(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
