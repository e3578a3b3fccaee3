"""Every error lorasweep shows a user as one line (no traceback), and the tuple of them.

Each message names the field or file, the value and what would be valid. A leaf module: it imports
nothing from lorasweep, so every layer can raise these.
"""
from __future__ import annotations


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


# Mistakes in a config or its data, found before any weight is read: exit 2 with the message.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, ModelUnavailableError)
