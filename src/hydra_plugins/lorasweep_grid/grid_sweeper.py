"""The grid sweeper behind `-m a=1,2 b=x,y`: Hydra's basic sweeper without its up-front composition.

Hydra's BasicSweeper composes every job once to validate the batch, then the launcher composes it
again. lorasweep's launchers compose and triage every job before any of them runs (a bad override
still stops the sweep before anything trains), so the first pass is the same work twice: 10 s of a
100-run plan.
"""
from __future__ import annotations

from typing import Sequence

from lorasweep.compat import basic_sweeper


class GridSweeper(basic_sweeper()):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Left to the launcher, which composes every job before it runs any."""
