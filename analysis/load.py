"""Collect result JSON files into one flat pandas DataFrame (one row per run key).

Reads only the result JSON contract (DESIGN.md, "The result JSON"); never imports torch or
lorasweep. Bad files (corrupt, truncated, not an object, foreign, other schema) are skipped with one
warning line each on stderr and counted in the LoadReport.
"""
from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

import pandas as pd

SCHEMA = 1
# Methods whose runs have lora.* settings (r, alpha, proj); the same list as lorasweep.config.spec, kept
# here because analysis reads JSON only and imports nothing of the training side.
ADAPTER_METHODS = ("lora", "dora", "rslora", "pissa", "qlora", "qlora8")
RESULT_NAME = "result.json"
CANONICAL_ORDER = "qkvogud"
# When one run key appears twice (e.g. a results store copied to a second folder), keep the most
# informative record: a finished run (done, then diverged: its loss became NaN or infinite) beats a
# pruned one, which beats the rest. These are the statuses of lorasweep.run.store.STATUSES.
_STATUS_RANK = {"done": 0, "diverged": 1, "pruned": 2, "skipped_budget": 3, "failed": 4}
# The run-defining settings that flatten's named columns already hold (model and dtype in `model`, r,
# lr, ...); every other one (train.max_steps, model.layers, task.max_test, ...) gets a column named by
# its path in the config, a dot in every such name (analysis.tables.cell_keys finds them by it).
NAMED_SETTINGS = {"model.name", "model.dtype", "method", "task.name", "lora.r", "lora.alpha", "lora.dropout",
                  "lora.proj", "train.lr", "train.seed"}


@dataclass
class LoadReport:
    """What load_results found: files read, rows kept, duplicates, and files skipped (path, why)."""

    files: int = 0
    loaded: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    test_metrics: set[str] = field(default_factory=set)  # the column names of the test metrics found

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every result.json under the given dirs (recursively), files, or glob patterns; sorted, unique."""
    found: set[Path] = set()
    for p in paths:
        for m in path_matches(p):
            if m.is_dir():
                found.update(m.rglob(RESULT_NAME))
            elif m.is_file():
                found.add(m)
    return sorted(found)


def path_matches(p: str | Path) -> list[Path]:
    """What one path argument names: itself if it exists, else the paths its glob pattern matches."""
    return [Path(p)] if Path(p).exists() else [Path(m) for m in glob.glob(str(p), recursive=True)]


def canonical_proj(code: object) -> str | None:
    """A projection code as a set, printed in the order qkvogud (`vq` -> `qv`); None stays None."""
    if not isinstance(code, str) or not code:
        return None
    if code.strip() == "all":  # every linear layer (lora.proj=all): a code of its own
        return "all"
    return "".join(c for c in CANONICAL_ORDER if c in code)


def _get(d: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _model_label(cfg: dict) -> object:
    """The model's name; a base held in another dtype than float32 (model.dtype) is another model to
    compare, so it is named too: 'qwen3-0.6b (bfloat16)'. float32 results leave the dtype out."""
    name, dtype = _get(cfg, "model", "name"), _get(cfg, "model", "dtype")
    return name if dtype in (None, "float32") else f"{name} ({dtype})"


def config_settings(cfg: dict, prefix: str = "") -> dict[str, object]:
    """Every leaf of a run's config by its dotted path ({"train.max_steps": 250, ...}); a list as its
    JSON text, so that every value can be compared and grouped."""
    out: dict[str, object] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(config_settings(value, path + "."))
        else:
            out[path] = json.dumps(value) if isinstance(value, list) else value
    return out


def flatten(res: dict, path: str) -> dict:
    """One flat row from one result dict. Missing sections give None (NaN in the frame)."""
    cfg = res.get("config") or {}
    lora = cfg.get("lora") or {}
    method = cfg.get("method")
    adapted = method in ADAPTER_METHODS  # r/alpha/proj mean nothing for none/full
    params = res.get("params") or {}
    timing = res.get("timing") or {}
    row = {
        "run_key": res["run_key"], "slug": res.get("slug"), "status": res.get("status"),
        "reason": res.get("reason") or "",
        "model": _model_label(cfg), "family": _get(cfg, "model", "family"),
        "task": _get(cfg, "task", "name"), "task_kind": _get(cfg, "task", "kind"), "method": method,
        "r": lora.get("r") if adapted else None, "alpha": lora.get("alpha") if adapted else None,
        "dropout": lora.get("dropout") if adapted else None,
        "proj": canonical_proj(lora.get("proj")) if adapted else None,
        "lr": _get(cfg, "train", "lr"), "seed": _get(cfg, "train", "seed"),
        "max_steps": _get(cfg, "train", "max_steps"),
        "budget": _get(res, "budget", "max_trainable"),
        "trainable": params.get("trainable"), "total": params.get("total"),
        "trainable_pct": params.get("trainable_pct"), "predicted": params.get("predicted"),
        "n_adapted_modules": params.get("n_adapted_modules"),
        "train_loss": _get(res, "metrics", "train", "loss"),
        "objective": _get(res, "objective", "value"),
        "objective_name": _get(res, "objective", "name"),  # test.accuracy, test.token_accuracy (generation)
        "diverged_step": _get(res, "divergence", "step"),  # the step whose training loss was NaN or infinite
        "adapter_bytes": _get(res, "artifacts", "size_bytes"),
        "load_s": timing.get("load_s"), "train_s": timing.get("train_s"),
        "eval_s": timing.get("eval_s"), "total_s": timing.get("total_s"), "steps": timing.get("steps"),
        "peak_rss_mb": _get(res, "memory", "peak_rss_mb"), "peak_gpu_mb": _get(res, "memory", "peak_gpu_mb"),
        "path": path,
    }
    row.update(test_metrics(res))
    row.update({k: v for k, v in config_settings(cfg).items() if k not in NAMED_SETTINGS})
    row["curve"] = res.get("curve") or []
    return row


def test_metrics(res: dict) -> dict[str, object]:
    """Every scalar test metric as its column (accuracy, accuracy_se, n, ...); loss is renamed so that
    it cannot be confused with the training loss."""
    return {"test_loss" if k == "loss" else k: v for k, v in (_get(res, "metrics", "test") or {}).items()
            if isinstance(v, (int, float)) or v is None}


def _check(res: object) -> str | None:
    """Why this parsed JSON is not a result we can read, or None when it is."""
    if not isinstance(res, dict):
        return f"not a JSON object ({type(res).__name__})"
    if "schema" not in res or "run_key" not in res:
        return "not a lorasweep result (no schema/run_key)"
    if res["schema"] != SCHEMA:
        return f"unsupported schema {res['schema']!r} (this reader knows {SCHEMA})"
    return None


def load_results(paths: Iterable[str | Path], warn: TextIO | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read every result.json under `paths` into one DataFrame, one row per run key."""
    warn = warn or sys.stderr
    report = LoadReport()
    rows: dict[str, dict] = {}
    for f in find_result_files(paths):
        report.files += 1
        try:
            res = json.loads(f.read_bytes())
        except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
            why = f"unreadable JSON ({type(e).__name__}: {str(e)[:80]})"
            res = None
        else:
            why = _check(res)
        if why:
            report.skipped.append((str(f), why))
            print(f"warning: skipped {f}: {why}", file=warn)
            continue
        row = flatten(res, str(f))
        report.test_metrics.update(test_metrics(res))
        old = rows.get(row["run_key"])
        if old is not None:
            report.duplicates += 1
            if _STATUS_RANK.get(old["status"], 9) <= _STATUS_RANK.get(row["status"], 9):
                continue
        rows[row["run_key"]] = row
    report.loaded = len(rows)
    df = pd.DataFrame(list(rows.values()))
    return df, report
