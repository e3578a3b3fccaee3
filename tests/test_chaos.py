"""bench/chaos.py's short soak in the suite: about 20 random faults (SIGKILL of a driver, of a worker or
of a whole sweep, SIGTERM, two extra drivers at once, a store read-only, or full, for a moment) on three tiny
sweeps side by side (a grid, a packed grid, an Optuna study with a pruner), each continued with its
same command after each fault; then the benchmark's checks, from the results stores and the Optuna
storage (bench/chaos.py says how each is counted). The full soak adds a grid on 2 workers: its
restarts start two workers each, and the suite gives this test one core."""
from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.append(str(ROOT / "bench"))  # appended: bench/analysis.py must not hide the analysis package
import chaos  # noqa: E402

SEED = 20261205  # the faults, their moments and their targets; the table printed below names it


@pytest.mark.slow
def test_a_short_chaos_soak_trains_nothing_twice_loses_nothing_and_finishes_every_sweep(tmp_path):
    report = chaos.soak(faults=20, seed=SEED, gap=2.0, root=tmp_path, sweeps=("grid", "pack", "optuna"))
    chaos.print_report(report, seed=SEED)  # the table per sweep, shown when an assertion below fails
    total = report["total"]
    assert sum(report["faults"].values()) == 20
    assert total["trained twice"] == 0 and total["lost"] == 0, report
    assert total["stale claims"] == 0 and total["running trials"] == 0, report
    assert total["stuck"] == 0 and total["finished"] == total["planned"] == chaos.PLANNED * total["rounds"], report
    assert total["trials told"] == total["n_trials"] >= chaos.PLANNED, report  # every round of the study: n_trials
    assert total["tracebacks"] == 0, report
    assert report["failures"] == []
