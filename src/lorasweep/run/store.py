"""The results store and the result JSON: the only contract between training and analysis.

One folder per run in the store (`results_dir`), named <slug>-<run key>; in it `result.json`,
written atomically (temp file + rename) so a reader never sees half a result and a crash never
leaves one. docs/ARCHITECTURE.md lists the fields.

Every JSON file the project writes goes through write_json_atomically, which writes strict JSON:
a non-finite float (NaN, +-Infinity: a diverged eval loss, say) becomes null, never the `NaN`
literal that Python's json writes by default and strict parsers (jq, JavaScript, Go) reject.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import socket
import tempfile
from pathlib import Path
from typing import Any, Mapping

SCHEMA = 1
# diverged: the training loss became NaN or infinite; a result (like done), never retrained
STATUSES = ("done", "failed", "skipped_budget", "pruned", "diverged")
RESULT_FILE = "result.json"
DEFAULT_STORE = "results"


def store_dir(cfg: Mapping[str, Any]) -> Path:
    """The results store a composed config names (`results_dir`, relative to where you launch)."""
    return Path(cfg.get("results_dir") or DEFAULT_STORE)


def run_dir(results_dir: str | Path, slug: str, run_key: str) -> Path:
    """The run's folder: readable slug + run key, so the same run always lands in the same place."""
    return Path(results_dir) / f"{slug}-{run_key}"


def write_result(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write `result` (plus its schema version) as the run's result.json; returns what was written
    (non-finite numbers as None, as in the file)."""
    assert result.get("status") in STATUSES, result.get("status")
    record = finite({"schema": SCHEMA, **result})
    write_json_atomically(folder / RESULT_FILE, record)
    return record


def write_json_atomically(target: Path, data: Any) -> None:
    """Temp file + rename in the same folder: a reader sees the old file or the new one, never half.
    Strict JSON: non-finite floats are written as null (see `finite`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite(data), f, indent=2, default=_jsonable, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be read by others
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(folder: Path) -> dict[str, Any] | None:
    """The stored result of a run, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def env_info() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(), "host": socket.gethostname(),
        "slurm_job_id": slurm_job_id(),
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0) if os.environ.get("SLURM_JOB_ID") else None,
    }


def slurm_job_id() -> str | None:
    """The job id as squeue and sacct print it: ARRAYID_INDEX for a task of a job array."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def peak_memory() -> dict[str, float | None]:
    import torch

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss_mb, 1), "peak_gpu_mb": gpu_mb}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def finite(x: Any) -> Any:
    """`x` with every non-finite float (NaN, +-inf) replaced by None, recursively through dicts,
    lists and tuples; numpy and torch scalars become Python numbers first (so a NaN among them is
    caught too). Anything else is left for json's `default` to convert or refuse."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if not isinstance(x, (str, bytes, int, float)) and hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        x = x.item()  # a numpy / torch scalar (a 0-d array or tensor)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
