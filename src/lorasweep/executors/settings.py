"""A launcher setting that is a whole number (n_jobs, retries, runs_per_gpu, ...), checked one way by
every driver: a ConfigError naming the field, the value, what it means and what is valid."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def whole_number(field: str, value: Any, meaning: str, minimum: int = 1, default: str = "1") -> int:
    """A launcher setting that is a whole number of at least `minimum` (2.0 is 2), else a ConfigError
    naming the field, the value, what it means and what is valid."""
    if isinstance(value, float) and value.is_integer():  # retries=2.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field}={value!r} is invalid: it is {meaning}, a whole number {minimum} or more "
                          f"(default {default})")
    return value
