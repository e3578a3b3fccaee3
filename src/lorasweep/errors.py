"""Every error lorasweep shows a user as one line (no traceback), and the tuple of them.

Each message names the field or file, the value and what would be valid. A leaf module: it imports
nothing from lorasweep, so every layer can raise these.
"""
from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A config value is invalid. The message names the field, the value and what is valid."""


class DataError(ValueError):
    """A data file that is missing or holds a row the task cannot use (file:line, field)."""


class ModelUnavailableError(RuntimeError):
    """A model cannot be obtained here (not installed, not cached, hub unreachable)."""


class ExportError(ValueError):
    """A run folder that cannot be exported; the message says why and what to do."""


class SubmissionError(RuntimeError):
    """The cluster refused the runs (sbatch's error, e.g. 'Invalid partition name specified')."""


class StoreError(RuntimeError):
    """The results store could not be written: the path and the cause, e.g. 'No space left on device
    writing results/<run>/adapter/adapter_model.safetensors'. Raised by a run (exit 1), not a mistake
    in its config; `no_space` says whether every later run would fail the same way."""

    def __init__(self, path: str, cause: str, code: int | None = None):
        super().__init__(str(path), cause, code)  # args: what pickling (a worker process) sends back
        self.path, self.cause, self.errno = str(path), cause, code

    def __str__(self) -> str:
        return f"{self.cause} writing {self.path}"

    @property
    def no_space(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)

    @property
    def whole_store(self) -> bool:
        """The fault is the store's, not this run's: every later run would fail the same way."""
        return self.no_space or self.errno == errno.EROFS


class AcceleratorMemoryError(RuntimeError):
    """A run ran out of accelerator (GPU) memory: the device, its free and total memory where torch
    can say, and the settings that drive memory. The run is recorded failed with this as its reason
    (its traceback.txt holds torch's own error); said in one line (exit 1), not a config mistake: the
    same config may fit on a larger device."""


class WorkerDiedError(RuntimeError):
    """A run's worker process died under it: 'worker killed by signal 9 (SIGKILL): likely out of
    memory; its peak RSS was 1.2 GiB' (the kernel's out-of-memory killer sends SIGKILL). Raised in the
    sweep's driver, which records the run failed with this reason; the other runs go on."""


class UnwritableStoreError(ConfigError):
    """results_dir cannot be written at all (found before anything trains): 'results_dir=/x is not
    writable: Read-only file system'; `cause` and `errno` as the probe's OSError said them."""

    def __init__(self, results_dir: str, cause: str, code: int | None = None):
        super().__init__(str(results_dir), cause, code)  # args: what pickling (a worker process) sends back
        self.results_dir, self.cause, self.errno = str(results_dir), cause, code

    def __str__(self) -> str:
        return f"results_dir={self.results_dir} is not writable: {self.cause}"


class UnreadableResultError(ValueError):
    """A result.json in the store that is there but cannot be read as a lorasweep result (truncated,
    not JSON, a JSON object without our schema/status): the run is trained again and overwrites it."""

    def __init__(self, path: str, why: str):
        super().__init__(str(path), why)
        self.path, self.why = str(path), why

    def __str__(self) -> str:
        return f"{self.path} is unreadable ({self.why})"


class RunClaimedError(RuntimeError):
    """The run is being trained by another process now (lorasweep.run.claims): it is not started
    here; a sweep driver waits for its result instead."""

    def __init__(self, folder, holder: str):
        super().__init__(str(folder), holder)
        self.folder, self.holder = str(folder), holder

    def __str__(self) -> str:
        return f"{self.folder} is being trained by {self.holder}"


class SweepExit(Exception):
    """A sweep ends with exit status `code` (1: runs failed or it stopped, 2: a config mistake, 130:
    interrupted). Raised by the sweep's library code, turned into the process's exit status by its
    entry point (the Hydra plugins); `said`: its reason was said already in one line, so no
    traceback follows (else the entry point says `str(self)`)."""

    def __init__(self, code: int, message: str = "", said: bool = True):
        super().__init__(message)
        self.code, self.said = code, said


# Failures whose message says all there is (no traceback helps after it): the store's path and cause,
# a killed worker's signal and peak RSS, what drives accelerator memory.
SAID_IN_FULL: tuple[type[Exception], ...] = (StoreError, WorkerDiedError, AcceleratorMemoryError)


def cause(error: BaseException) -> str:
    """A failed run's cause in one line: the message of a failure said in full, else the exception's
    type and message."""
    return str(error) if isinstance(error, SAID_IN_FULL) else f"{type(error).__name__}: {error}"


# Mistakes in a config or its data, found before any weight is read: exit 2 with the message.
# UnwritableStoreError is a ConfigError: a results_dir that cannot be written is one of them.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, ModelUnavailableError)
