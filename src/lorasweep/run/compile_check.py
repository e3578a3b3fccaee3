"""train.compile: whether a run's training is torch.compile'd, checked before any weight is read.

torch.compile's default backend (inductor) writes C++ for the CPU (and compiles Triton's launchers
on a GPU) with the machine's C++ compiler, at the first step; without one the run would fail there,
after loading its model. It is a loop option, not in the run key: a compiled run is the same run,
its numbers as close to the eager run's as another machine's (float rounding, and dropout masks
drawn from inductor's own random generator), so it is the same result.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

from ..errors import ConfigError

COMPILERS = ("g++", "c++", "clang++")  # what inductor looks for, unless CXX names one


def check_compile(value: Any) -> bool:
    """train.compile as a bool; a ConfigError for anything else, or for true without a C++ compiler."""
    if not isinstance(value, bool):
        raise ConfigError(f"train.compile={value!r} is invalid: true (torch.compile the model for training) "
                          f"or false (default)")
    if value and not cxx_compiler():
        raise ConfigError("train.compile=true needs a C++ compiler for torch.compile, and none was found "
                          f"(CXX, or {', '.join(COMPILERS)} on PATH): install one (Debian: apt-get install g++), "
                          "or set train.compile=false")
    return value


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would use here, or None."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named)
    return next((found for found in map(shutil.which, COMPILERS) if found), None)
