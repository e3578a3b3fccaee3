"""An exclusive lock on a file, for the moments when processes of one machine must not do the same
thing at once: convert a packaged model, create a tracker's experiment. flock holds between the
processes of one machine; runs claimed on a shared results store go through lorasweep.run.claims."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def exclusive(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs; no lock when None.
    Others wait for it, then run their block."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
