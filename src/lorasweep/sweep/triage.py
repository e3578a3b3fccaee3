"""The decision every sweep makes for each of its runs before anything trains.

    triage(cfg) -> invalid      a mistake in the config or its data (said in one line)
                   done         its result is in the store: never trained twice
                   diverged     its stored result is diverged (the training loss became NaN or
                                infinite): finished like done, not trained again, since the same
                                config diverges again (a run is deterministic in its seed)
                   over_budget  more trainable parameters than the budget: recorded, never launched
                   claimed      another process is training it now (lorasweep.run.claims): the
                                driver waits for its result instead of training it twice
                   train        none of the above

The grid driver, the Optuna loop and the plan view all ask here. One more case is the driver's own:
two cells of one sweep with the same run key (e.g. method=none x lora.r=4,8) train once.

The store, too: a results_dir that cannot be written raises UnwritableStoreError (a sweep stops
before anything trains; the plan view, which writes nothing, does not probe), and a stored
result.json that cannot be read is no result: the run trains again, and `unreadable` says which
file and why, for the driver to tell the user.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import USER_ERRORS, UnreadableResultError
from ..run.claims import Holder, drop_dead_claim, live_holder
from ..run.store import FINISHED, check_writable, read_result, store_dir
from ..run.tracking import check_tracking

if TYPE_CHECKING:
    from ..run.plan import Plan


@dataclass(frozen=True)
class Triage:
    verdict: str                  # invalid | done | diverged | over_budget | claimed | train
    plan: Plan | None = None      # None when invalid
    folder: Path | None = None    # the run's folder in the results store
    stored: dict | None = None    # its stored result (any status), or the skipped_budget record just written
    mistake: Exception | None = None  # invalid: the ConfigError, DataError, ... that says what is wrong
    unreadable: str = ""          # "<path> is unreadable (why)": a stored result.json that trains again
    holder: str = ""              # claimed: who trains it, e.g. "pid 4242 on node3, since 10:02:11"
    claim: Holder | None = None   # claimed: its claim (owner, heartbeat), for a closer look (sweep/status.py)

    @property
    def error(self) -> str:
        return str(self.mistake or "")


def after_wait(cfg: Mapping[str, Any], before: dict | None) -> tuple[str, dict | None]:
    """A run another process was training, looked at again (writing nothing): ("claimed", None)
    while it still trains; ("done" | "diverged", its result) once finished; ("failed", its result)
    when that process recorded it failed (`before`, the result seen at triage, tells a failure from
    an earlier sweep's); else ("train", None): its claim went without a result (interrupted, its
    owner dead), and the driver trains it itself."""
    decision = triage(cfg, record=False)
    stored = decision.stored
    if decision.verdict == "claimed":
        return "claimed", None
    if decision.verdict in FINISHED:
        return decision.verdict, stored
    if stored and stored != before and stored.get("status") == "failed":
        return "failed", stored
    return "train", None


def triage(cfg: Mapping[str, Any], record: bool = True) -> Triage:
    """Plan the run (no weight is read) and decide. `record`: check that the store can be written
    (UnwritableStoreError if not; once per results_dir) and write an over-budget run's skipped_budget
    result (the plan view writes nothing)."""
    # Imported at the first run a sweep plans, not with this module: torch, transformers and peft take
    # seconds, and a sweep's own settings (retries, pack, sampler...) are checked before, in a second.
    from ..run.records import record_over_budget
    from ..run.plan import plan_run

    try:
        check_tracking(cfg.get("tracking") or {})  # a tracker that cannot work fails every run: say it now
        plan = plan_run(cfg)
    except USER_ERRORS as e:
        return Triage("invalid", mistake=e)
    store = store_dir(cfg)
    if record:
        check_writable(store)
    folder = plan.folder(store)
    unreadable = ""
    try:
        stored = read_result(folder)
    except UnreadableResultError as e:
        stored, unreadable = None, str(e)
    if stored and stored.get("status") in FINISHED:
        if record:  # a trainer killed between writing its result and releasing its claim left it: no one else will
            drop_dead_claim(folder)
        return Triage(stored["status"], plan, folder, stored)
    if plan.over_budget:
        return Triage("over_budget", plan, folder, record_over_budget(plan, store) if record else stored,
                      unreadable=unreadable)
    claim = live_holder(folder)
    if claim is not None:
        return Triage("claimed", plan, folder, stored, holder=claim.describe(), claim=claim)
    return Triage("train", plan, folder, stored, unreadable=unreadable)
