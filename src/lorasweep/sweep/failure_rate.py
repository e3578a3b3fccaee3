"""hydra.sweeper.max_failure_rate: stop asking for trials once too many of them fail.

A failed trial is one told to Optuna as FAIL: its run failed (an exception, a killed worker, after
hydra.launcher.retries), its config was invalid, or it diverged. The rate is failed / told over the
trials this command told (a study continued after a fix starts counting afresh); it is exceeded when
it is above the setting, as in hydra-optuna-sweeper: 0 stops at the first failure, 1 never stops
(lorasweep's default: the study goes on past failures, as it always has; the plugin's is 0).
"""
from __future__ import annotations

import math
from typing import Any

from optuna.trial import TrialState

from ..errors import ConfigError

DEFAULT = 1.0


def check_max_failure_rate(value: Any) -> float:
    """The setting as a float in [0, 1], or a ConfigError naming it, the value and what is valid."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={value!r} is invalid: it is the fraction of failed "
                          f"trials above which the study stops asking for more, a number from 0 (stop at the "
                          f"first failure) to 1 (never stop; default {DEFAULT:g})")
    return float(value)


class FailureRate:
    """Counts the trials told and those failed; `exceeded` once failed / told is above the limit."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.told = self.failed = self.diverged = 0

    def count(self, state: TrialState, status: str | None) -> None:
        self.told += 1
        if state == TrialState.FAIL:
            self.failed += 1
            if status == "diverged":
                self.diverged += 1

    @property
    def runs_failed(self) -> int:
        """Failed trials that did not diverge (a diverged run is a result): the sweep exits 1, as a grid does."""
        return self.failed - self.diverged

    @property
    def exceeded(self) -> bool:
        return self.told > 0 and self.failed / self.told > self.limit

    def stop_line(self) -> str:
        diverged = f", {self.diverged} of them diverged" if self.diverged else ""
        return (f"sweep: stopped: {self.failed} of {self.told} trials failed{diverged} "
                f"({self.failed / self.told:.0%}), more than hydra.sweeper.max_failure_rate={self.limit:g} "
                f"allows; no new trials are started, those in flight finish")
