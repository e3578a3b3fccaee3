"""The command line's end of lorasweep: what launch.py calls for one run, and the user's mistakes
turned into one clear line (exit 2, no traceback); a write the results store refused (a full disk) is
one line too, with the path and the cause (exit 1; the traceback is in the run's traceback.txt if
the store took it), and so are a run out of accelerator memory (exit 1, what to lower in its line),
a run another process is training now (exit 1) and Ctrl-C (exit 130).

`python launch.py` (one run) comes here; `python launch.py -m ...` (a sweep) goes from Hydra to the
sweeper and launcher plugins in src/hydra_plugins/, which hand the sweep to lorasweep.sweep.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

from .console import quiet_libraries
from .errors import USER_ERRORS, AcceleratorMemoryError, RunClaimedError, StoreError
from .run.preflight import preflight


def main(cfg: Mapping[str, Any]) -> float | None:
    """Run one composed config; returns its objective (what a sweeper optimises)."""
    try:
        _refuse_sweep_settings()
        preflight(cfg)  # a mistake in the config's values is said before torch and transformers load
        quiet_libraries()
        from .run.lifecycle import run_config

        result = run_config(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except StoreError as e:
        hint = "; free space on that disk and run the same command again" if e.no_space else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        raise SystemExit(1) from None
    except AcceleratorMemoryError as e:  # recorded failed, torch's traceback in the run's traceback.txt
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except RunClaimedError as e:  # another terminal or sweep trains it now: its result will land there
        print(f"error: {e}; not started here: its result will be in that folder when it finishes", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C: the run has released its claim and written no result (not a failure)
        print("interrupted: the run wrote no result; run the same command again to train it", file=sys.stderr)
        raise SystemExit(130) from None
    return (result.get("objective") or {}).get("value")


def _refuse_sweep_settings() -> None:
    """A sweep's settings without -m: Hydra makes one run of the rest and ignores them, so
    `launch.py hydra/launcher=plan ...` would train where the user asked for a list, and
    `launch.py +sweep=rank_ablation` would train the default once. ConfigError naming them."""
    from hydra.core.hydra_config import HydraConfig

    from .errors import ConfigError
    from .executors.factory import PLAN_LAUNCHER

    if not HydraConfig.initialized():  # called outside launch.py (tests, a notebook)
        return
    hydra = HydraConfig.get()
    if hydra.launcher.get("_target_") == PLAN_LAUNCHER:
        raise ConfigError("hydra/launcher=plan lists the runs of a sweep: add -m (python launch.py -m ... "
                          "hydra/launcher=plan); without it this would train one run")
    params = hydra.sweeper.get("params")
    if params:
        raise ConfigError(f"hydra.sweeper.params ({', '.join(f'{k}={v}' for k, v in params.items())}; "
                          f"+sweep=NAME sets them) sweep only with -m: add -m (python launch.py -m +sweep=NAME "
                          f"...); without it this would train one run of the defaults")
