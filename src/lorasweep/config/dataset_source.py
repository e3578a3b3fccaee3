"""task=hf's own settings, checked without its data: the dataset, its splits as `datasets` spells
them (`train[:90%]`), the columns each format's fields are read from, the carved eval. What needs
the data (a split or column the dataset lacks, a bad row) is checked when it is read: tasks/hf_data.py.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..errors import ConfigError

# The fields of each task format a dataset's columns map to (task.columns; the optional ones last).
FORMAT_FIELDS = {"classification": ("text", "label", "text_pair"), "mcq": ("question", "options", "answer", "system"),
                 "chat": ("messages",), "completion": ("prompt", "completion")}
SPLIT_KEYS = ("train", "eval", "test")  # task.split.<key> of a dataset task (task=hf)
# A split as `datasets` spells it: name, an optional [from:to] slice (rows or %), parts joined by +.
_SPLIT_PART = re.compile(r"^[\w.-]+(\[(-?[\d_]+%?)?:(-?[\d_]+%?)?\])?(\((closest|pct1_dropremainder)\))?$")


def _fail(field_name: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{field_name}={value!r} is invalid: {valid}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def dataset_source(t: Mapping[str, Any], kind: str, tests: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """A dataset read through the `datasets` library (task=hf): what can be checked without its data.
    `tests`: task.tests as (name, split) pairs, read by config/spec.py as for files."""
    dataset = t.get("dataset")
    if not isinstance(dataset, str) or not dataset.strip() or dataset == "???":
        raise _fail("task.dataset", dataset, "a hub id (task.dataset=ag_news) or a local folder of parquet/arrow/"
                                             "json files or of a save_to_disk dataset")
    split = t.get("split") or {}
    if not isinstance(split, Mapping) or set(split) - set(SPLIT_KEYS):
        raise _fail("task.split", split, f"a mapping of {', '.join(SPLIT_KEYS)} to split names, "
                                         f"e.g. task.split.train='train[:90%]'")
    for key in SPLIT_KEYS:
        _check_split(f"task.split.{key}", split.get(key), required=key != "eval")
    for name, value in tests:
        _check_split(f"task.tests.{name}", value, required=True)
    eval_size, seed = t.get("eval_size", 0.1), t.get("split_seed", 0)
    if not _is_number(eval_size) or eval_size <= 0 or (eval_size >= 1 and eval_size != int(eval_size)):
        raise _fail("task.eval_size", eval_size, "a share of train in (0, 1), or a whole number of rows, carved "
                                                 "off as eval where the dataset has no validation split")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail("task.split_seed", seed, "a whole number >= 0")
    subset = t.get("subset") or ""
    name = re.sub(r"[^\w.-]+", "_", dataset.rstrip("/").rsplit("/", 1)[-1]) + (f"_{subset}" if subset else "")
    return {"name": name, "dataset": dataset, "subset": str(subset), "revision": str(t.get("revision") or ""),
            "columns": _columns(t.get("columns") or {}, kind), "train": str(split["train"]),
            "eval": str(split.get("eval") or ""), "test": str(split["test"]), "tests": tests,
            "eval_size": eval_size, "split_seed": seed}


def _check_split(key: str, value: Any, required: bool) -> None:
    if not value and not required:
        return
    if not isinstance(value, str) or not all(_SPLIT_PART.match(part.strip()) for part in value.split("+")):
        raise _fail(key, value, "a split name, sliced as the datasets library spells it: train, "
                                "train[:90%], train[-1000:], train[:50%]+test[:50%]")


def _columns(columns: Any, kind: str) -> tuple[tuple[str, str | tuple[str, ...]], ...]:
    """task.columns: each of the format's fields -> the dataset's column holding it; mcq's options
    may be a list of columns (one option each, as MMLU-style A, B, C, D columns)."""
    fields = FORMAT_FIELDS[kind]
    valid = (f"a mapping of {kind}'s fields ({', '.join(fields)}) to the dataset's columns, "
             f"e.g. task.columns.{fields[0]}=sentence")
    if not isinstance(columns, Mapping):
        raise _fail("task.columns", columns, valid)
    out = []
    for field_name, column in columns.items():
        if column is None:  # conf/task/hf.yaml lists every format's fields, null: the field's own name
            continue
        if field_name not in fields:
            raise _fail(f"task.columns.{field_name}", column, f"{kind} has no field {field_name!r}: {valid}")
        many = field_name == "options" and isinstance(column, (list, tuple))
        names = list(column) if many else [column]
        if not names or not all(isinstance(c, str) and c.strip() for c in names):
            raise _fail(f"task.columns.{field_name}", column, "a column name" + (
                ", or a list of columns, one option each" if field_name == "options" else ""))
        out.append((str(field_name), tuple(names) if many else column))
    return tuple(out)
