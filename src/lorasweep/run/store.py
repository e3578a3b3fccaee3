"""The results store and the result JSON: the only contract between training and analysis.

One folder per run in the store (`results_dir`), named <slug>-<run key>; in it `result.json`,
written atomically (temp file + rename) so a reader never sees half a result and a crash never
leaves one. docs/ARCHITECTURE.md lists the fields.

Every JSON file the project writes goes through write_json_atomically, which writes strict JSON:
a non-finite float (NaN, +-Infinity: a diverged eval loss, say) becomes null, never the `NaN`
literal that Python's json writes by default and strict parsers (jq, JavaScript, Go) reject.

When the store fails: a write that fails (a full disk, a read-only mount) becomes a StoreError naming
the path and the cause; a results_dir that cannot be written at all is refused before anything
trains (`check_writable`); a result.json that is there but cannot be read is an UnreadableResultError,
not "no result" (the run is trained again, and the user is told which file).
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import platform
import resource
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from ..errors import StoreError, UnreadableResultError, UnwritableStoreError

SCHEMA = 1
# diverged: the training loss became NaN or infinite; a result (like done), never retrained
STATUSES = ("done", "failed", "skipped_budget", "pruned", "diverged")
FINISHED = ("done", "diverged")  # a stored result of these is never trained again
TRACEBACK_FILE = "traceback.txt"  # beside a failed run's result.json (run/lifecycle.write_failure)
RESULT_FILE = "result.json"
DEFAULT_STORE = "results"


def store_dir(cfg: Mapping[str, Any]) -> Path:
    """The results store a composed config names (`results_dir`, relative to where you launch)."""
    return Path(cfg.get("results_dir") or DEFAULT_STORE)


def run_dir(results_dir: str | Path, slug: str, run_key: str) -> Path:
    """The run's folder: readable slug + run key, so the same run always lands in the same place."""
    return Path(results_dir) / f"{slug}-{run_key}"


def run_key_of(folder: Path) -> str:
    """The run key in a run folder's name (run_dir's last part)."""
    return folder.name.rsplit("-", 1)[-1]


def write_result(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write `result` (plus its schema version) as the run's result.json; returns what was written
    (non-finite numbers as None, as in the file)."""
    assert result.get("status") in STATUSES, result.get("status")
    record = finite({"schema": SCHEMA, **result})
    write_json_atomically(folder / RESULT_FILE, record)
    if record["status"] != "failed":  # an earlier attempt's traceback would say this run failed
        try:
            (folder / TRACEBACK_FILE).unlink(missing_ok=True)
        except OSError:
            pass
    return record


def written_at(folder: Path) -> float:
    """When the run's result.json was written (its mtime, wall clock), or -inf when there is none:
    a driver tells the result its worker wrote from one an earlier sweep left (records.left_by_worker)."""
    try:
        return (folder / RESULT_FILE).stat().st_mtime
    except OSError:
        return float("-inf")


def write_json_atomically(target: Path, data: Any) -> None:
    """Temp file + rename in the same folder: a reader sees the old file or the new one, never half.
    Strict JSON: non-finite floats are written as null (see `finite`)."""
    text = json.dumps(finite(data), indent=2, default=_jsonable, allow_nan=False) + "\n"
    write_text_atomically(target, text)


def write_text_atomically(target: Path, text: str) -> None:
    """`text` into `target` by temp file + rename in the same folder (fsynced first): a reader sees
    the old file or the new one, never half. A failed write raises StoreError (path and cause)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=target.parent)
    except OSError as e:
        raise _from_os_error(e, target) from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be read by others
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _from_os_error(e, target) from e
        raise


def read_result(folder: Path) -> dict[str, Any] | None:
    """The stored result of a run; None if there is none. A result.json that is there but is not a
    readable lorasweep result (truncated, binary, a JSON object without our schema and status) raises
    UnreadableResultError, which says the file and why: it must not pass for "no result" silently."""
    path = folder / RESULT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnreadableResultError(path, e.strerror or str(e)) from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnreadableResultError(path, "not UTF-8 text: a binary file") from None
    except json.JSONDecodeError as e:
        raise UnreadableResultError(path, f"{e.msg}: line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UnreadableResultError(path, f"a JSON {type(data).__name__}, not a result object")
    missing = [k for k in ("schema", "status") if k not in data]
    if missing:
        raise UnreadableResultError(path, f"a JSON object without {' and '.join(missing)}: not a lorasweep result")
    if data["status"] not in STATUSES:
        raise UnreadableResultError(path, f"status {data['status']!r} is not one of {', '.join(STATUSES)}")
    return data


# -- writing into the store: refused before anything trains, or one line naming the path and cause --

_WRITABLE: set[Path] = set()  # the results_dirs (resolved) this process found writable: probed once each
# Drivers started at once on a new store each create it, probe it and remove it again: 3 x 300
# probes at once saw the folder vanish 12 times (a sweep refused: "not writable: No such file or
# directory"); new_temp_file tries again, and gives up only on a folder that never stays
FOLDER_TRIES = 20
T = TypeVar("T")


def check_writable(results_dir: str | Path) -> None:
    """Refuse a results_dir that cannot be written, before anything trains: create it if missing, then
    create and remove a temp file in it (permissions alone do not tell: root ignores them, a read-only
    mount does not). Folders it created go again: a run that stops before writing (a model that
    cannot be had) leaves no empty store behind. Once per results_dir per process while it is
    writable, so a sweep of many runs pays it once; a refusal is probed again next time, so that a
    store read-only for a moment does not refuse a long-lived worker's every later run."""
    path = Path(results_dir)
    key = path.resolve()
    if key in _WRITABLE:
        return
    refused = _probe(path)
    if refused is not None:
        raise UnwritableStoreError(str(results_dir), refused.strerror or str(refused), refused.errno)
    _WRITABLE.add(key)


def check_still_writable(results_dir: str | Path) -> None:
    """check_writable in a sweep's worker, whose driver found the store writable before the sweep
    began: a refusal now (remounted read-only, full) is the store's fault, a StoreError naming it and
    the cause, which stops the sweep in one line as a write it refused does."""
    try:
        check_writable(results_dir)
    except UnwritableStoreError as e:
        raise StoreError(str(results_dir), e.cause, e.errno) from None


def missing_folders(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, deepest first (the order to remove them in)."""
    missing, p = [], path.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists."""
    missing = missing_folders(path)
    return missing[-1].parent if missing else path.absolute()


def _probe(path: Path) -> OSError | None:
    """Why `path` cannot be written (the OSError), or None."""
    try:  # one look: a rival's probe may remove the folder between two (exists, then not a folder)
        if not stat.S_ISDIR(path.stat().st_mode):  # mkdir would say "File exists"
            return NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
    except (FileNotFoundError, NotADirectoryError):  # not there (mkdir makes it), or under a file (mkdir says so)
        pass
    missing = missing_folders(path)
    try:
        fd, tmp = new_temp_file(path, ".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return e
    finally:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:
                pass
    return None


def new_temp_file(folder: Path, prefix: str) -> tuple[int, str]:
    """A new temp file in `folder` (fd, path), the folder made first with its missing parents."""
    return _in_folder(folder, lambda: tempfile.mkstemp(prefix=prefix, dir=folder))


def keep_file(path: Path) -> None:
    """`path`, made empty if missing, its folder first with its missing parents: a file that another
    library opens later (a study's SQLite database or journal, empty: new), whose new folder a rival's
    probe would otherwise remove before it is opened."""
    if not path.exists():
        _in_folder(path.parent, path.touch)


def _in_folder(folder: Path, make: Callable[[], T]) -> T:
    """make() once `folder` is there, made with its missing parents. A rival that makes the same new
    folders and removes them again (a probe of a new store, a claim whose run left nothing) may
    remove them between our mkdir and our file, or inside mkdir itself (it found the folder, then no
    folder: "File exists"): made again, up to FOLDER_TRIES times."""
    tries = 1
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return make()
        except (FileNotFoundError, FileExistsError):
            if tries == FOLDER_TRIES:
                raise
            tries += 1


def writable_problem(results_dir: str | Path) -> str | None:
    """Why results_dir looks not writable, without writing anything (the plan view): None when it
    looks fine. Looks only (the folder or its nearest existing parent); check_writable is the proof."""
    path = _nearest_existing(Path(results_dir))
    if not path.is_dir():
        return os.strerror(errno.ENOTDIR)
    if os.access(path, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


# errnos that mean the store itself refuses the write (not a bug in the run)
STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
_OS_ERROR = re.compile(r"os error (\d+)")  # Rust's io::Error (safetensors): "... (os error 28)"
# SQLite's own result codes for the same faults (an Optuna study's SQLite file in the store): SQLITE_FULL,
# SQLITE_READONLY, SQLITE_IOERR, SQLITE_PERM, as sqlite3's errors carry them (the low byte: the primary code)
_SQLITE_ERRNOS = {13: errno.ENOSPC, 8: errno.EROFS, 10: errno.EIO, 3: errno.EACCES}


def storage_error(error: BaseException, path: str | Path) -> StoreError | None:
    """The StoreError behind a failed write into `path` (a file, or the folder being written), or None
    when the failure is not the store's. Looks through the exception's chain: safetensors reports a
    full disk as SafetensorError '... (os error 28)', torch.save only as a failed stream write."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StoreError):
            return e
        if isinstance(e, OSError) and e.errno in STORE_ERRNOS:
            return _from_os_error(e, path)
        match = _OS_ERROR.search(str(e))
        number = int(match.group(1)) if match else _SQLITE_ERRNOS.get((getattr(e, "sqlite_errorcode", None) or 0) & 0xFF)
        if number in STORE_ERRNOS:
            return StoreError(str(path), os.strerror(number), number)
        e = e.__cause__ or e.__context__
    if _looks_like_a_failed_write(error) and _no_space_left(Path(path)):
        return StoreError(str(path), os.strerror(errno.ENOSPC), errno.ENOSPC)
    return None


def _from_os_error(e: OSError, path: str | Path) -> StoreError:
    return StoreError(e.filename or str(path), e.strerror or str(e), e.errno)


def _looks_like_a_failed_write(error: BaseException) -> bool:
    text = f"{error} {error.__context__ or ''}".lower()
    return any(w in text for w in ("write", "iostream", "inline_container", "i/o error"))


def _no_space_left(path: Path, below: int = 1 << 20) -> bool:
    """The filesystem holding `path` has (almost) no room left: less than `below` bytes."""
    try:
        st = os.statvfs(_nearest_existing(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < below


def env_info() -> dict[str, Any]:
    import peft

    from .calibration import machine_fingerprint
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        # str(): torch's is a TorchVersion, which would make the driver import torch to unpickle a result
        "python": platform.python_version(), "torch": str(torch.__version__),
        "transformers": transformers.__version__, "peft": peft.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(), "host": socket.gethostname(),
        # what calibrates predictions (run/calibration): the CPU's model and count, the GPU's name
        "machine": machine_fingerprint(torch.cuda.get_device_name(0) if cuda else None),
        # the GPUs this run's process was given (executors/gpus pins each local worker); None: not set
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # data-parallel ranks that trained it (executors/data_parallel sets WORLD_SIZE); 1: one process
        "data_parallel": int(os.environ.get("WORLD_SIZE") or 1),
        "slurm_job_id": slurm_job_id(),
        "slurm_restarts": slurm_restarts() if os.environ.get("SLURM_JOB_ID") else None,
    }


def slurm_job_id() -> str | None:
    """The job id as squeue and sacct print it: ARRAYID_INDEX for a task of a job array."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def slurm_restarts() -> int:
    """How many times SLURM has requeued this job (SLURM_RESTART_COUNT; unset before the first: 0)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def peak_memory() -> dict[str, float | None]:
    import torch

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss_mb, 1), "peak_gpu_mb": gpu_mb}


def weights_memory(model, method: str, base_total: int) -> dict[str, float]:
    """What the base model's weights take as this run holds them (`base_weights_mb`: a quantized base
    packed, its other weights as prepared), and for a quantized method what method=lora holds for the
    same base (`lora_base_weights_mb`: `base_total` parameters in float32, as lorasweep loads them)
    and the difference, the memory quantization saved (`saved_vs_lora_mb`)."""
    from ..config.spec import QUANTIZED_METHODS

    adapter = ("lora_", "modules_to_save.")  # what peft added; the base keeps its original head
    held = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if not any(a in name for a in adapter)) / 2**20
    out = {"base_weights_mb": round(held, 1)}
    if method in QUANTIZED_METHODS:
        lora = base_total * 4 / 2**20
        out.update(lora_base_weights_mb=round(lora, 1), saved_vs_lora_mb=round(lora - held, 1))
    return out


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
