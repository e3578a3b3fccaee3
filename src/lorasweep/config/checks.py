"""What a composed config can be refused for from its own values: the spec (config/spec.py), the
budget and lora.r=auto, a quantized method this machine cannot run, the data-parallel ranks a
sweep's driver gave it, train.step_sleep_s, train.save_steps and train.pack_product. No transformers, peft or data file is touched here (torch only to ask for a
GPU, for the quantized methods), so `python launch.py` says such a mistake in under a second, before
those libraries load; run/plan.py builds on these to count the run.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import re
from decimal import Decimal
from typing import Any, Mapping

from ..errors import ConfigError
from .spec import QUANTIZED_METHODS, RunSpec, from_config

# Set by a sweep's driver from hydra.launcher.gpus_per_run (sweep/grid): the run trains with this
# many data-parallel ranks (executors/data_parallel). Not run-defining: the same run on 1 or N GPUs.
DATA_PARALLEL = "data_parallel"


def checked_spec(cfg: Mapping[str, Any]) -> tuple[RunSpec, int | None, bool]:
    """The run's validated spec, its budget (budget.max_trainable) and whether lora.r=auto; for auto
    the spec holds rank 1 until run/plan.py fits the largest rank within the budget. ConfigError
    naming the field and the value otherwise."""
    budget = max_trainable(cfg)
    auto = str((cfg.get("lora") or {}).get("r")) == "auto"
    if auto and budget is None:
        raise ConfigError("lora.r='auto' needs a budget to fit: set budget.max_trainable (e.g. budget=1m)")
    spec = from_config(with_rank(cfg, 1) if auto else cfg)
    check_available(spec.method)  # qlora without CUDA/bitsandbytes: say so now, not after loading
    check_data_parallel(spec, data_parallel(cfg))
    step_sleep_s(cfg.get("train") or {})
    save_steps(cfg.get("train") or {})
    pack_product(cfg.get("train") or {})
    return spec, budget, auto


def save_steps(train_cfg: Mapping[str, Any]) -> int | None:
    """train.save_steps: checkpoint every N optimizer steps (not in the run key); 0 never; null lets
    the loop decide (every eval_steps inside a SLURM job). ConfigError unless null or a whole number >= 0."""
    value = train_cfg.get("save_steps")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"train.save_steps={value!r} is invalid: a whole number of steps >= 0 between "
                          f"checkpoints (0: none), or null (every train.eval_steps inside a SLURM job)")
    return value


PACK_PRODUCTS = ("auto", "grouped", "batched", "loop")


def pack_product(train_cfg: Mapping[str, Any]) -> str:
    """train.pack_product: how a pack's layers apply its runs' adapters (model/adapter_pack; not in the
    run key: each way computes the same run, up to float rounding). ConfigError unless one of
    PACK_PRODUCTS (null: auto)."""
    value = train_cfg.get("pack_product")
    if value is None:
        return "auto"
    if value not in PACK_PRODUCTS:
        raise ConfigError(f"train.pack_product={value!r} is invalid: how a pack applies its runs' adapters, one of "
                          f"{', '.join(PACK_PRODUCTS)} (default auto: grouped products where a layer allows them)")
    return value


def step_sleep_s(train_cfg: Mapping[str, Any]) -> float:
    """train.step_sleep_s: seconds of pause after each training step (not in the run key: a slowed
    run computes the same), to watch a tiny run, or stop it, while it trains. ConfigError unless a
    finite number >= 0 (null: 0)."""
    value = train_cfg.get("step_sleep_s")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"train.step_sleep_s={value!r} is invalid: the seconds to pause after each training "
                          f"step, a number >= 0 (default 0: no pause)")
    return float(value)


def check_available(method: str) -> None:
    """Fail before any weight is read when the machine cannot run `method`."""
    if method not in QUANTIZED_METHODS:
        return
    import torch  # here: a config of another method is checked without it

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (this machine has none)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if missing:
        raise ConfigError(f"method={method} loads the base model quantized with bitsandbytes and needs "
                          f"{' and '.join(missing)}; use method=lora here")


_COUNT = re.compile(r"(\d[\d_]*(?:\.\d+)?(?:e\d+)?)([kmb]?)", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parameter_count(value: Any) -> int | None:
    """A count of parameters as a researcher writes one: 1000000, 1_000_000, 1e6, 1M, 1.5m, 500k, 2B;
    None when it is not a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = _COUNT.fullmatch(value.strip())
        if match is None:
            return None
        value = Decimal(match.group(1).replace("_", "")) * _SCALE[match.group(2).lower()]  # exact: 0.1k is 100
    elif isinstance(value, float) and math.isfinite(value):
        value = Decimal(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def max_trainable(cfg: Mapping[str, Any]) -> int | None:
    value = (cfg.get("budget") or {}).get("max_trainable")
    if value is None:
        return None
    count = parameter_count(value)
    if count is None:
        raise ConfigError(f"budget.max_trainable={value!r} is invalid: a positive number of trainable "
                          f"parameters (e.g. 1000000 or 1M), or null for no budget")
    return count


def rank_within(per_rank: int, fixed: int, method: str, budget: int) -> int:
    """lora.r=auto: the largest r whose run, fixed + r x per_rank trainable parameters (model/params.py
    counts both), has at most `budget`."""
    r = (budget - fixed) // per_rank
    if r < 1:
        raise ConfigError(f"budget.max_trainable={budget:,} is below the smallest possible {method} run on "
                          f"these projections: r=1 needs {fixed + per_rank:,} trainable parameters")
    return int(r)


def with_rank(cfg: Mapping[str, Any], r: int) -> dict[str, Any]:
    """A copy of `cfg` with lora.r set to `r`."""
    cfg = copy.deepcopy(dict(cfg))
    cfg["lora"] = {**(cfg.get("lora") or {}), "r": r}
    return cfg


def data_parallel(cfg: Mapping[str, Any]) -> int:
    """How many data-parallel ranks train this run (1: one process, as always)."""
    return int(cfg.get(DATA_PARALLEL) or 1)


def check_data_parallel(spec: RunSpec, ranks: int) -> None:
    """A run that cannot train on `ranks` data-parallel ranks: a ConfigError before anything loads."""
    if ranks <= 1:
        return
    where = f"hydra.launcher.gpus_per_run={ranks}"
    if spec.method in QUANTIZED_METHODS:  # its base is loaded onto GPU 0 whole (device_map), untested per rank
        raise ConfigError(f"method={spec.method} cannot train data-parallel ({where}): a quantized base is "
                          f"loaded onto one GPU; use gpus_per_run=1, or method=lora/dora")
    if spec.train.batch_size % ranks:  # train.batch_size is the run's global batch: each rank takes a share
        raise ConfigError(f"train.batch_size={spec.train.batch_size} is not divisible by {where}: the batch "
                          f"is the run's whole batch, split evenly between its {ranks} ranks; use a multiple "
                          f"of {ranks}")
