"""How a process ended before its run did, in words: a local worker (executors/local) or a
data-parallel rank (executors/data_parallel)."""
from __future__ import annotations

import signal


def death_reason(exitcode: int | None, peak_rss: int | None, who: str = "worker") -> str:
    """'worker killed by signal 9 (SIGKILL): likely out of memory; its peak RSS was 1.2 GiB'."""
    rss = f"its peak RSS was {_size(peak_rss)}" if peak_rss else "its peak RSS was not measured"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        # SIGKILL is what the kernel's out-of-memory killer sends; it is also `kill -9`
        oom = ": likely out of memory" if -exitcode == signal.SIGKILL else ""
        return f"{who} killed by signal {-exitcode} ({name}){oom}; {rss}"
    return f"{who} exited with status {exitcode} before its run finished; {rss}"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
