"""hydra.sweeper.custom_search_space: a function (cfg, trial) -> None that extends each trial's params.

As in hydra-optuna-sweeper: after a trial has its params from the search space (hydra.sweeper.params
and the command line), the function is called with the sweep's config and the Optuna trial; the
params it suggests through the trial (conditional, or derived: `trial.suggest_int("lora.alpha", 2 * r,
2 * r)`) are overrides of that trial's run like the others. The fixed overrides are the trial's user
attributes when it is called, and it may suggest none of them.

    # mysearch.py, importable by the driver (on PYTHONPATH, or in the project folder)
    def alpha_from_r(cfg, trial):
        r = trial.params["lora.r"]
        trial.suggest_categorical("lora.alpha", [r, 2 * r])

    python launch.py -m hydra/sweeper=optuna 'lora.r=choice(4,8,16)' \
        hydra.sweeper.custom_search_space=mysearch.alpha_from_r
"""
from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from ..errors import ConfigError

Extender = Callable[[Any, optuna.trial.Trial], None]
_WHAT = ("the dotted path of a function (cfg, trial) -> None, e.g. mysearch.alpha_from_r, importable by "
         "the driver (on PYTHONPATH, or in the project folder)")


class CustomSearchSpaceError(RuntimeError):
    """The function raised, or suggested a fixed parameter: a mistake every trial would meet."""


def load_custom_search_space(path: Any) -> Extender | None:
    """The function that `path` names, or a ConfigError saying which part of it was not found."""
    if path in (None, ""):
        return None
    where = f"hydra.sweeper.custom_search_space={path!r}"
    parts = str(path).split(".")
    if not isinstance(path, str) or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"{where} is invalid: give {_WHAT}")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        module = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module)
            break
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                continue  # `module` is no module: try a shorter one
            raise ConfigError(f"{where}: importing {module} failed: {type(e).__name__}: {e}") from None
        except Exception as e:  # the module itself raised
            raise ConfigError(f"{where}: importing {module} failed: {type(e).__name__}: {e}") from None
    else:
        raise ConfigError(f"{where} is invalid: there is no module {parts[0]!r}; give {_WHAT}")
    for name in parts[split:]:
        if not hasattr(found, name):
            raise ConfigError(f"{where} is invalid: {module} has no {'.'.join(parts[split:])!r}; give {_WHAT}")
        found = getattr(found, name)
    if not callable(found):
        raise ConfigError(f"{where} is invalid: it is a {type(found).__name__}, not a function; give {_WHAT}")
    return found


def extend_trial(extender: Extender, path: str, cfg: Any, trial: optuna.trial.Trial, fixed: dict[str, str]) -> None:
    """Call the function on `trial`; a CustomSearchSpaceError (one line, with where it raised) when it
    raises or suggests a parameter that an override fixes."""
    for name, value in fixed.items():  # what hydra-optuna-sweeper shows the function of the fixed overrides
        trial.set_user_attr(name, value)
    try:
        extender(cfg, trial)
    except Exception as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise CustomSearchSpaceError(f"hydra.sweeper.custom_search_space={path} raised {type(e).__name__}: {e} "
                                     f"({Path(frame.filename).name}:{frame.lineno})") from e
    clash = sorted(set(trial.params) & set(fixed))
    if clash:
        given = ", ".join(f"{k}={fixed[k]}" for k in clash)
        raise CustomSearchSpaceError(f"hydra.sweeper.custom_search_space={path} suggested {', '.join(clash)}, "
                                     f"which an override fixes ({given}): a parameter is searched or fixed, "
                                     f"not both")
