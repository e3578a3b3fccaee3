"""One data-parallel rank of a run: `python -m lorasweep.executors.rank CONFIG_JSON`, started by its
worker (executors/data_parallel) with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, which the
Trainer reads to train through DDP.

Rank 0 trains into the run's folder and writes what a run writes; any other rank trains the same
run into a scratch folder beside CONFIG_JSON (its worker deletes it), with no tracker, and reads
rank 0's checkpoints (the run's trainer/ folder) to resume with it. A rank that fails writes why
to the file its worker named in LORASWEEP_RANK_ERROR (rank, time, reason, traceback, the line a
sweep says, whether it ran out of accelerator memory) and exits 1.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..errors import AcceleratorMemoryError, cause
from .data_parallel import ERROR_FILE
from .worker import configure_process, die_with_parent


def main(config_file: str) -> None:
    rank = int(os.environ["RANK"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # decides, and stops the worker, which stops its ranks
    die_with_parent()  # a worker killed (even SIGKILL) takes its ranks with it
    configure_process(int(os.environ.get("OMP_NUM_THREADS") or 0) or None)
    try:
        train_rank(json.loads(Path(config_file).read_text()), rank, Path(config_file).parent)
    except BaseException as e:  # an interrupt too: the worker decides what the run's outcome is
        _write_error(rank, e)
        raise SystemExit(1) from None


def train_rank(cfg: dict, rank: int, scratch: Path) -> None:
    from ..run.lifecycle import load_and_train
    from ..run.loop import LoopOptions
    from ..run.plan import plan_run
    from ..run.records import TRAINER_DIR
    from ..run.store import store_dir

    plan = plan_run(cfg)
    folder = plan.folder(store_dir(cfg))
    own = folder if rank == 0 else scratch / f"rank-{rank}"
    tracking = dict(cfg.get("tracking") or {}) if rank == 0 else {}
    load_and_train(plan, own, tracking, None, LoopOptions.from_config(cfg.get("train") or {}),
                    workdir=folder / TRAINER_DIR)


def _write_error(rank: int, error: BaseException) -> None:
    text = "".join(traceback.format_exception(error))
    print(text, file=sys.stderr, flush=True)
    path = os.environ.get(ERROR_FILE)
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps({"rank": rank, "time": time.time(), "traceback": text,
                                   "reason": f"{type(error).__name__}: {error}",  # as a run records it
                                   "said": cause(error),  # as a sweep says it
                                   "out_of_memory": isinstance(error, AcceleratorMemoryError)}))
        tmp.replace(path)  # whole or not at all: its worker may read it as soon as this rank exits


if __name__ == "__main__":
    main(sys.argv[1])
