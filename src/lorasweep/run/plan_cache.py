"""What planning reads off a model, kept on disk: a sweep planned again on a model this machine has
planned before (a restarted driver, the same command later, the plan view) starts without importing
transformers or peft, which is most of a driver's start-up (4.6 of 5.5 CPU-s, bench/RESULTS.md
section 20).

An entry is a JSON file under <cache>/plans/ ($LORASWEEP_CACHE, else ~/.cache/lorasweep), named by
the hash of everything its value follows from: the inputs, lorasweep's own code, the versions of
torch, transformers, peft and tokenizers, and the model's files (config, tokenizer, custom code; not
its weights). A changed file, library or line of lorasweep is a new entry, never a stale one. Models
read from the hub (source hub, a model=hf hub id) are not cached: their files are the HF cache's.
Errors are never cached: a config that fails to plan fails each time, in the same words.
Each read marks its entry used (its mtime); a process that writes an entry first removes those
unused for KEEP_DAYS, so the entries of older code, libraries or model files go in time.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config.spec import ModelSpec
from ..errors import StoreError
from .store import write_json_atomically

FORMAT = 1  # of an entry's value: a change here is a new entry
LIBRARIES = ("torch", "transformers", "peft", "tokenizers")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
KEEP_DAYS = 30  # an entry unused this long is removed (by the next process that writes one)


def cached(kind: str, model: ModelSpec, inputs: dict[str, Any], compute: Callable[[], dict]) -> dict:
    """`compute()` (a JSON-able dict), or its value as stored for the same `inputs` on the same
    model files, code and libraries. `kind` names what is kept (facts, lengths)."""
    model_json = json.dumps(model.__dict__, sort_keys=True, default=_plain)
    identity = model_identity(model_json)
    if identity is None:
        return compute()
    key = json.dumps({"kind": kind, "format": FORMAT, "model": model_json, "files": identity, "inputs": inputs},
                     sort_keys=True, default=_plain)
    path = plans_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: planned as if new, and kept
        pass
    else:
        _touch(path)
        return value
    value = compute()
    _remove_unused(path.parent)
    _write(path, value)
    return value


def _plain(value: Any) -> Any:
    """JSON for what json cannot write itself: a mapping (a spec's frozen ones) as a dict, a set or
    other collection as a list."""
    return dict(value) if isinstance(value, Mapping) else list(value)


def plans_dir() -> Path:
    from ..model.assets import cache_root

    return cache_root() / "plans"


@lru_cache(maxsize=16)
def model_identity(model_json: str) -> str | None:
    """A hash of what a model's plan follows from besides its config fields: lorasweep's code, the
    libraries and the model's own files; None for a model whose files this process cannot name
    without reaching for the hub or converting it."""
    spec = ModelSpec(**json.loads(model_json))
    files = _model_files(spec)
    if files is None:
        return None
    h = hashlib.sha256(_code_hash().encode())
    for name in LIBRARIES:
        h.update(f"{name}={_version(name)};".encode())
    for path in files:
        h.update(f"{path.name}:".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _model_files(spec: ModelSpec) -> list[Path] | None:
    """The files a model's architecture and tokenizer are read from, sorted; [] for a tiny model
    (built from its spec and lorasweep's code); None where they are the hub's."""
    from ..config import hf_model
    from ..model import assets

    if spec.source == "tiny":
        return []
    if spec.source == "package":
        folder = assets.package_model_dir(spec)
    elif spec.source == "gguf_package":
        folder = assets.cache_root() / "models" / Path(spec.file).stem
        if not all((folder / f).is_file() for f in assets.READY_FILES):  # not converted yet
            return None
    elif spec.source == "hf":
        folder = hf_model.local_folder(spec.id)
        if folder is None:
            return None
    else:  # hub
        return None
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES))


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """lorasweep's own source: any edit (a counting rule, a tiny model's defaults) is a new entry."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _touch(path: Path) -> None:
    """Mark an entry used now (a cache others own, or read-only: it ages as if unused)."""
    try:
        os.utime(path)
    except OSError:
        pass


@lru_cache(maxsize=1)
def _remove_unused(folder: Path) -> None:
    """Remove the entries unused for KEEP_DAYS, and temp files left by a write cut short; once a
    process (it lists the folder), and only where a new entry is written."""
    oldest = time.time() - KEEP_DAYS * 86400
    for path in folder.glob("*.json"):  # entries, and temp files (".facts-....json")
        try:
            if path.stat().st_mtime < oldest:
                path.unlink()
        except OSError:  # another process removed it first, or it is not ours to remove
            pass


def _write(path: Path, value: dict) -> None:
    """Atomically (run/store: a reader sees a whole entry or none); a cache that cannot be written
    (read-only, full) only means the next plan reads the model again."""
    try:
        write_json_atomically(path, value)
    except StoreError:
        pass
