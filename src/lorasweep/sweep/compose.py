"""Hydra composition for sweeps: each job's config (composed once, reused), its short label, and the
base class of lorasweep's launchers. The Hydra side of lorasweep.sweep: plugins hand jobs here."""
from __future__ import annotations

import copy
import hashlib
from typing import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ..compat import apply_overrides, overrides_dirname

GROUP_LENGTH = 120  # the most characters of a sweep's name (a tracker's group)


class ContextLauncher(Launcher):
    """A Hydra launcher that keeps the sweep's config and Hydra's context for its launch()."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context


class JobConfigs:
    """Each job's composed config: `configs(overrides) -> (node, plain dict without the hydra node)`.

    Hydra composes every job from scratch, re-reading every YAML file (~0.1 s a job: 10 s for a
    100-run plan). A job whose overrides differ from the first job's only in plain values
    (`lora.r=8`, not a config group like `model=...`) gets a copy of the first job's config with
    those values set by Hydra's own override code, which is what composing it would give.
    """

    def __init__(self, config_loader, sweep_config: DictConfig):
        self.loader, self.sweep_config = config_loader, sweep_config
        self.parser = OverridesParser.create()
        self.base: tuple[dict[str, Override], DictConfig] | None = None
        self.group = sweep_name(sweep_config)

    def __call__(self, overrides: Sequence[str]) -> tuple[DictConfig, dict]:
        parsed = self.parser.parse_overrides(list(overrides))
        by_key = {o.key_or_group: o for o in parsed}
        changed = self._value_changes(by_key) if len(by_key) == len(parsed) else None
        if changed is None:
            node = self.loader.load_sweep_config(self.sweep_config, list(overrides))
            if len(by_key) == len(parsed):
                self.base = (by_key, node)
        else:
            node = copy.deepcopy(self.base[1])
            apply_overrides(changed, node)
            task = [o for o in parsed if not o.is_hydra_override()]
            node.hydra.overrides.task = [o.input_line for o in task]
            dirname = node.hydra.job.config.override_dirname
            node.hydra.job.override_dirname = overrides_dirname(
                overrides=task, exclude_keys=list(dirname.exclude_keys), item_sep=dirname.item_sep,
                kv_sep=dirname.kv_sep)
        return node, with_group(plain_config(node), self.group)

    def _value_changes(self, by_key: dict[str, Override]) -> list[Override] | None:
        """The overrides that differ from the first job's, when all of them are plain value changes."""
        if self.base is None or by_key.keys() != self.base[0].keys():
            return None
        changed = [o for k, o in by_key.items() if o.input_line != self.base[0][k].input_line]
        if any(o.type != OverrideType.CHANGE or o.is_hydra_override() or o.package is not None
               or o.is_sweep_override() or self.loader.repository.group_exists(o.key_or_group) for o in changed):
            return None
        return changed


def plain_config(node: DictConfig) -> dict:
    """A composed config as a plain resolved dict, without the `hydra` node."""
    plain = OmegaConf.to_container(node, resolve=False)
    plain.pop("hydra", None)  # its interpolations need Hydra's runtime, and no run reads it
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def sweep_name(sweep_config: DictConfig) -> str:
    """The sweep's name, which groups its runs in a tracker: its command line's overrides, as typed
    (`lora.r=4,8,16 lora.proj=qk,qkvo`), less where results and tracking go; the same command, started
    again, continues the same group."""
    typed = OmegaConf.select(sweep_config, "hydra.overrides.task", default=None) or []
    kept = [o for o in typed if not o.lstrip("+~").startswith(("results_dir=", "tracking.", "tracking="))]
    name = " ".join(kept) or "(defaults)"
    if len(name) > GROUP_LENGTH:  # W&B takes 128 characters: a long command is cut, a hash of it all kept
        name = f"{name[:GROUP_LENGTH - 10]} {hashlib.sha1(name.encode()).hexdigest()[:9]}"
    return name


def with_group(cfg: dict, group: str) -> dict:
    """`cfg` with tracking.group set to the sweep's `group` when it tracks and the user set none."""
    tracking = cfg.get("tracking")
    if isinstance(tracking, dict) and tracking.get("backend", "none") != "none" and not tracking.get("group"):
        tracking["group"] = group
    return cfg


def varying_overrides(job_overrides: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(the overrides every job shares, one label per job made of what differs)."""
    lists = [filter_overrides(o) for o in job_overrides]
    shared = set.intersection(*map(set, lists)) if len(lists) > 1 else set()
    labels = [" ".join(o for o in lst if o not in shared) or "(defaults)" for lst in lists]
    return [o for o in (lists[0] if lists else []) if o in shared], labels
