"""What the fault benchmarks share (faults.py, chaos.py): the processes they start with the test hooks
on (tests/hooks/sitecustomize.py), the trainings those hooks count, and a watch on results stores
that keeps each finished result as it first appeared, to tell at the end that none was lost or changed."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections import Counter
from pathlib import Path

from _proc import ROOT

HOOKS = ROOT / "tests" / "hooks"
FINISHED = ("done", "diverged")


def hooked_env(count: Path, **env: str) -> dict[str, str]:
    """os.environ for a process started with the test hooks, its trainings counted into `count`."""
    if importlib.util.find_spec("wrapt") is None:  # the hooks would count nothing, and every check pass
        raise SystemExit("the test hooks (tests/hooks) need wrapt: bash scripts/setup.sh --dev installs it")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "LORASWEEP_COUNT_TRAININGS": str(count),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])), **env}


def counted(count: Path, finished: bool = False) -> list[tuple[int, Path]]:
    """(pid, run folder) of every training the hooks counted in `count`, in order; `finished`: those that
    ran to their end (`count`.finished)."""
    path = Path(f"{count}.finished") if finished else Path(count)
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), Path(folder)) for pid, folder in (line.split(" ", 1) for line in lines)]


class ResultWatch:
    """Every finished result (`finished`: statuses) under `stores` (a list that may grow while it
    watches) as it first appeared, by its SHA-256, looked at every 0.25 s until stop(); and how many
    trainings of its run had ended then (the hooks' `count`): one that ends after it trained a
    finished run again."""

    def __init__(self, stores: list[Path], count: Path, finished: tuple[str, ...] = FINISHED):
        self.stores, self.count, self.finished = stores, count, finished
        self.seen: dict[Path, str] = {}
        self.ended_then: dict[Path, int] = {}  # run folder -> its trainings ended when its result was first seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            self.look()

    def look(self) -> None:
        with self._lock:
            new = {}
            for store in list(self.stores):
                for path in store.glob("*/result.json"):
                    if path not in self.seen:
                        try:
                            data = path.read_bytes()
                            if json.loads(data).get("status") in self.finished:
                                new[path] = hashlib.sha256(data).hexdigest()
                        except (OSError, ValueError):
                            pass
            if new:  # read after the results: it holds every training that ended before they were written
                ended = Counter(folder for _, folder in counted(self.count, finished=True))
                for path, digest in new.items():
                    self.seen[path] = digest
                    self.ended_then[path.parent] = ended[path.parent]

    def forget(self, path: Path) -> None:
        """A result the benchmark damages itself (to see what the sweep does with it)."""
        self.look()
        with self._lock:
            self.seen.pop(path, None)
            self.ended_then.pop(path.parent, None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.look()

    def lost(self) -> list[Path]:
        """The finished results seen that are gone or changed now."""
        out = []
        for path, digest in self.seen.items():
            try:
                if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    out.append(path)
            except OSError:
                out.append(path)
        return out

    def trained_after(self) -> list[Path]:
        """The run folders whose training ran to its end again after their finished result was written."""
        ended = Counter(folder for _, folder in counted(self.count, finished=True))
        return [folder for folder, then in self.ended_then.items() if ended[folder] > then]
