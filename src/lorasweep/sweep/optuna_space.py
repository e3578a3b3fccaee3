"""Search space, sampler and directions for the Optuna sweeper, from Hydra's override grammar.

A leading underscore keeps Hydra's plugin scan from importing this module (and optuna) at every
`python launch.py`: the sweeper imports it only when a sweep starts.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Any, Mapping, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii")
# hydra/sweeper/sampler=NAME's _target_ (conf/hydra/sweeper/sampler/, as hydra-optuna-sweeper names them)
TARGETS = {"optuna.samplers.TPESampler": "tpe", "optuna.samplers.RandomSampler": "random",
           "optuna.samplers.GridSampler": "grid", "optuna.samplers.CmaEsSampler": "cmaes",
           "optuna.samplers.NSGAIISampler": "nsgaii"}
DIRECTIONS = ("maximize", "minimize")


def parse_space(arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split overrides into a search space (sweeps: choice, range, interval, a,b,c) and fixed overrides;
    ConfigError when there is no search space.

    A key given twice (in hydra.sweeper.params and on the command line) takes the later one: the command line.
    """
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()  # keeps +/~ prefixes and group@package: passed back verbatim
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = _distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    if not space:
        raise ConfigError("the Optuna sweeper found no search space: give one, e.g. 'lora.r=choice(4,8,16)' "
                          "or hydra.sweeper.params")
    return space, fixed


def _distribution(override: Override) -> BaseDistribution:
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            # range's stop is exclusive, Optuna's high inclusive
            return CategoricalDistribution(_choices(override))
        return IntDistribution(int(value.start), int(value.stop) - int(value.step), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{override.input_line}: this sweep is not supported by the Optuna sweeper; use "
                     f"choice(...), a,b,c, range(...), interval(a,b) or tag(log, interval(a,b))")


def _choices(override: Override) -> list[Any]:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for x in choices:
        if not isinstance(x, (str, int, float, bool, type(None))):
            raise ConfigError(f"{override.input_line}: a choice must be a str, int, float, bool or null, "
                             f"got {type(x).__name__}")
    return choices


def is_grid(spec: Any) -> bool:
    return sampler_spec(spec, None)[0] == "grid"


def grid_cells(space: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Every cell of the grid, in a fixed order (the first key varies slowest)."""
    grid = grid_of(space)
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def grid_of(space: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """The grid's values per key: categorical choices, or every step of an integer range."""
    grid: dict[str, list[Any]] = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            grid[name] = list(range(d.low, d.high + 1, d.step))
        else:
            raise ConfigError(f"hydra.sweeper.sampler=grid needs a discrete space, but {name} is {d}: "
                             f"use choice(...) or range(...) for it")
    return grid


def sampler_spec(spec: Any, seed: int | None) -> tuple[str, dict[str, Any]]:
    """(name, the sampler's arguments) from any spelling of hydra.sweeper.sampler:

        hydra.sweeper.sampler=tpe hydra.sweeper.seed=123                 a name (and the sweeper's seed)
        'hydra.sweeper.sampler={name: tpe, n_startup_trials: 5}'         a mapping with a name
        hydra/sweeper/sampler=tpe hydra.sweeper.sampler.seed=123         the config group (conf/hydra/
                                                                         sweeper/sampler/, hydra-optuna-
                                                                         sweeper's keys, a _target_)
    The sampler's own seed, when set, wins over hydra.sweeper.seed."""
    name, kwargs = spec, {}
    if isinstance(spec, Mapping):
        kwargs = {str(k): v for k, v in spec.items() if k not in ("name", "_target_", "_partial_")}
        name = spec.get("name")
        target = spec.get("_target_")
        if target is not None:
            if target not in TARGETS:
                raise ConfigError(f"hydra.sweeper.sampler._target_={target!r} is not a sampler lorasweep makes: "
                                 f"use one of {', '.join(TARGETS)}")
            if name is not None and str(name).lower() != TARGETS[target]:
                raise ConfigError(f"hydra.sweeper.sampler has name {name!r} and _target_ {target!r}: give one")
            name = TARGETS[target]
    name = str(name or "tpe").lower()
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={name!r} is unknown: choose one of {', '.join(SAMPLERS)}")
    if kwargs.get("seed") is None:
        kwargs["seed"] = seed
    return name, kwargs


def make_sampler(spec: Any, seed: int | None, space: Mapping[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    """The sampler of hydra.sweeper.sampler (any spelling: sampler_spec) for this search space."""
    name, kwargs = sampler_spec(spec, seed)
    if name == "grid":
        # The sweeper walks the grid itself (grid_cells): Optuna's GridSampler picks a random
        # unvisited cell, which repeats cells while trials are in flight and cannot take back a
        # trial a dead driver left running. The sampler only serves the enqueued cells.
        grid_of(space)  # a continuous dimension is an error now, not after the first trial
        return optuna.samplers.RandomSampler(seed=kwargs["seed"])
    factory = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "nsgaii": optuna.samplers.NSGAIISampler}[name]
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.sampler: {name} does not accept {sorted(kwargs)}: {e}") from None


def directions_for(direction: Any, objectives: Sequence[str]) -> list[str]:
    """One direction per objective; a single direction given for several objectives is an error."""
    given = [direction] if isinstance(direction, str) else list(direction or ["maximize"])
    given = [str(d).lower() for d in given]
    for d in given:
        if d not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.direction={d!r} is invalid: choose {' or '.join(DIRECTIONS)}")
    if len(given) != len(objectives):
        raise ConfigError(f"hydra.sweeper.direction has {len(given)} entries {given} but objectives has "
                         f"{len(objectives)} {list(objectives)}: give one direction per objective")
    return given


def default_study_name(arguments: Sequence[str], objectives: Sequence[str]) -> str:
    """Same overrides, same study: a restarted command continues where it stopped."""
    if not arguments:
        return "lorasweep"
    digest = hashlib.sha1("\n".join(sorted(arguments) + ["--"] + list(objectives)).encode()).hexdigest()
    return f"lorasweep-{digest[:10]}"


def format_value(value: Any) -> str:
    """A sampled value as an override value (full precision: it defines the run)."""
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)


def short(value: Any) -> str:
    """A sampled value for the progress line."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def params_text(trial) -> str:
    """A trial's params for a progress line: lora.r=8 train.lr=0.0003."""
    return " ".join(f"{k}={short(v)}" for k, v in trial.params.items())
