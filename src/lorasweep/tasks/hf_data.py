"""A dataset read through the `datasets` library (task=hf): a hub id, a local folder of parquet /
arrow / json / csv files, one such file, or a `save_to_disk` folder. Its splits (sliced as
`datasets` spells them: `train[:90%]`) become the row dicts the JSONL readers give, each checked
by the same checks (formats.check_rows); a bad row is named by its split and index.

    load_rows(spec) -> DatasetRows(rows by part, ClassLabel names, fingerprint)

Everything happens at plan time, before any weight loads. The fingerprint (a hash of every row the
run reads, and of the label names) goes into the run key (run/plan.py): a changed dataset is a new run.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Iterator

from ..config.paths import resolve_data_path
from ..config.dataset_source import FORMAT_FIELDS
from ..config.spec import TaskSpec
from ..console import say
from ..errors import ConfigError, DataError
from .formats import check_rows, mcq_from_text

# Splits taken as eval when task.split.eval is left empty, in this order; none: eval is carved from train.
VALIDATION_SPLITS = ("validation", "valid", "dev", "val")
# A single local file: the `datasets` builder that reads it (its rows become the split "train").
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_OPTIONAL = {"text_pair", "system"}  # fields a format reads only where the dataset has them

Pick = tuple[str, int]  # (split name, row index in that split)


@dataclass(frozen=True)
class DatasetRows:
    rows: dict[str, list[dict]]   # "train", "eval", "test" and each of spec.tests, by name
    labels: list[str]             # classification: the label column's ClassLabel names (else the ints seen, sorted)
    fingerprint: str              # sha256 of the rows and labels, 16 hex digits
    where: dict[str, str]         # each part's split, as said in messages (task.split.train='train[:90%]')


def load_rows(spec: TaskSpec) -> DatasetRows:
    """Every part's rows of `spec`'s dataset, checked as its format reads them. ConfigError for a
    split, column or subset the dataset lacks (naming the valid ones); DataError for a bad row."""
    splits = open_dataset(spec)
    name = describe(spec)
    lengths = {split: len(ds) for split, ds in splits.items()}
    where = {"train": f"task.split.train={spec.train!r}", "test": f"task.split.test={spec.test!r}"}
    picks = {"train": _picks(where["train"], spec.train, lengths, name),
             "test": _picks(where["test"], spec.test, lengths, name)}
    if spec.eval:
        where["eval"] = f"task.split.eval={spec.eval!r}"
        picks["eval"] = _picks(where["eval"], spec.eval, lengths, name)
    elif found := next((s for s in VALIDATION_SPLITS if s in lengths), None):
        where["eval"] = f"{name}'s {found!r} split"
        picks["eval"] = _picks(where["eval"], found, lengths, name)
    for test_name, expr in spec.tests:
        where[test_name] = f"task.tests.{test_name}={expr!r}"
        picks[test_name] = _picks(where[test_name], expr, lengths, name)
    fields = _fields(spec, splits, {split for part in picks.values() for split, _ in part}, name)
    if "eval" not in picks:
        picks["train"], picks["eval"] = _carve(spec, picks["train"], name)
        where["eval"] = f"the eval carved from task.split.train={spec.train!r}"
    limits = {"train": spec.max_train, "eval": spec.max_eval}
    class_names = _class_names(splits, fields) if spec.kind == "classification" else []
    rows = {part: check_rows(spec.kind, _records(splits, p[:limits.get(part, spec.max_test) or None], fields,
                                                 spec.kind, class_names, name))
            for part, p in picks.items()}
    labels = class_names or _int_labels(rows) if spec.kind == "classification" else []
    blob = json.dumps({"rows": rows, "labels": labels}, sort_keys=True, ensure_ascii=False, default=str)
    return DatasetRows(rows, labels, hashlib.sha256(blob.encode()).hexdigest()[:16], where)


def describe(spec: TaskSpec) -> str:
    """The dataset as messages name it: ag_news, glue/sst2, /data/mine (at revision r)."""
    text = spec.dataset + (f"/{spec.subset}" if spec.subset else "")
    return text + (f"@{spec.revision}" if spec.revision else "")


def open_dataset(spec: TaskSpec):
    """The dataset's splits (a DatasetDict): from a save_to_disk folder with load_from_disk, else
    with load_dataset (a hub id, a local folder, a local file). Memory-mapped: rows are read later."""
    import datasets

    datasets.disable_progress_bars()  # lorasweep's own lines only (console.quiet_libraries)
    path = resolve_data_path(spec.dataset)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            if spec.subset or spec.revision:
                key = "task.subset" if spec.subset else "task.revision"
                raise ConfigError(f"{key}={spec.subset or spec.revision!r} is invalid: {spec.dataset} is a "
                                  f"save_to_disk folder, which has neither subsets nor revisions")
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(f"task.dataset={spec.dataset!r} is invalid: a single file must be one of "
                                  f"{', '.join(FILE_BUILDERS)} (or name its folder, or a hub id)")
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:
            source = str(path) if path.exists() else spec.dataset
            loaded = datasets.load_dataset(source, spec.subset or None, revision=spec.revision or None)
    except (ConfigError, DataError):
        raise
    except Exception as e:  # noqa: BLE001 - offline, no such dataset or subset, unreadable files: one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"task.dataset={spec.dataset!r}" + (f" task.subset={spec.subset!r}" if spec.subset else "")
                        + f": cannot load it ({type(e).__name__}: {first})") from None
    if isinstance(loaded, datasets.Dataset):  # save_to_disk of one Dataset: its rows are the split "train"
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _split_names(expr: str) -> list[str]:
    return [part.strip().split("[")[0].split("(")[0] for part in expr.split("+")]


def _picks(key: str, expr: str, lengths: dict[str, int], name: str) -> list[Pick]:
    """The rows a split expression names, in order: (split, index) pairs."""
    from datasets import ReadInstruction

    for split in _split_names(expr):
        if split not in lengths:
            raise ConfigError(f"{key} names no split of {name}: its splits are {', '.join(lengths)}")
    try:
        spans = ReadInstruction.from_spec(expr.replace(" ", "")).to_absolute(lengths)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"{key} is invalid for {name}: {e}") from None
    picks = [(span.splitname, i) for span in spans for i in range(span.from_, span.to)]
    if not picks:
        raise DataError(f"{key}: no rows in {name} ({', '.join(f'{s}: {n}' for s, n in lengths.items())} rows)")
    return picks


def _carve(spec: TaskSpec, train: list[Pick], name: str) -> tuple[list[Pick], list[Pick]]:
    """(train, eval): eval drawn at random from train's rows (seeded), train keeps the rest in order. Said."""
    n = len(train)
    k = int(spec.eval_size) if spec.eval_size >= 1 else round(spec.eval_size * n)
    if not 0 < k < n:
        raise DataError(f"task.eval_size={spec.eval_size}: carving an eval of {k} rows from the {n} of "
                        f"task.split.train={spec.train!r} leaves no {'eval' if k <= 0 else 'train'}; "
                        f"set task.eval_size, or name an eval split with task.split.eval")
    order = list(range(n))
    random.Random(spec.split_seed).shuffle(order)
    say(f"task {spec.name}: {name} has no validation split: eval is {k} rows of task.split.train={spec.train!r} "
        f"drawn at random (task.eval_size={spec.eval_size}, task.split_seed={spec.split_seed}); train keeps "
        f"the other {n - k}")
    return [train[i] for i in sorted(order[k:])], [train[i] for i in order[:k]]


def _fields(spec: TaskSpec, splits, used: set[str], name: str) -> dict[str, str | tuple[str, ...]]:
    """Each of the format's fields -> the dataset column(s) it is read from, checked against the
    columns of every split the run reads: task.columns, else a column of the field's own name."""
    columns = dict(spec.columns)
    have = set.intersection(*(set(splits[s].column_names) for s in used))
    listing = ", ".join(c for c in splits[next(iter(used))].column_names if c in have)
    fields = {}
    for field in FORMAT_FIELDS[spec.kind]:
        column = columns.get(field, field)
        missing = [c for c in (column if isinstance(column, tuple) else (column,)) if c not in have]
        if field in columns and missing:
            raise ConfigError(f"task.columns.{field}={missing[0]!r} names no column of {name} "
                              f"(splits {', '.join(sorted(used))}): its columns are {listing}")
        if missing and field in _OPTIONAL:
            continue
        if missing:
            raise ConfigError(f"{name} has no column {field!r} for {spec.kind}'s field {field!r}: name the column "
                              f"that holds it with task.columns.{field}=COLUMN (its columns are {listing})")
        fields[field] = column
    return fields


def _class_names(splits, fields: dict) -> list[str]:
    """The label column's ClassLabel names (ids are their positions), or [] when it has none."""
    from datasets import ClassLabel

    for ds in splits.values():
        feature = ds.features.get(fields["label"])
        if isinstance(feature, ClassLabel):
            return list(feature.names)
    return []


def _int_labels(rows: dict[str, list[dict]]) -> list[str]:
    """Integer labels without ClassLabel names: the ids seen, in numeric order (else [], and the task
    sorts the labels seen as text, as for JSONL)."""
    seen = {r["label"] for part in rows.values() for r in part}
    if seen and all(isinstance(x, int) and not isinstance(x, bool) for x in seen):
        return [str(x) for x in sorted(seen)]
    return []


def _records(splits, picks: list[Pick], fields: dict, kind: str, class_names: list[str],
             name: str) -> Iterator[tuple[str, dict]]:
    """(where, row) pairs of `picks` in the format's field names; `where` is "<dataset> <split>[<index>]"."""
    wanted = sorted({c for col in fields.values() for c in (col if isinstance(col, tuple) else (col,))})
    by_split: dict[str, list[int]] = {}
    for split, i in picks:
        by_split.setdefault(split, []).append(i)
    fetched: dict[str, dict[int, dict]] = {}
    for split, indices in by_split.items():
        unique = sorted(set(indices))
        contiguous = unique[-1] - unique[0] + 1 == len(unique)
        ds = splits[split].select_columns(wanted)
        ds = ds.select(range(unique[0], unique[-1] + 1) if contiguous else unique)
        fetched[split] = dict(zip(unique, ds.to_list()))
    for split, i in picks:
        where = f"{name} {split}[{i}]"
        yield where, _row(where, fetched[split][i], fields, kind, class_names)


def _row(where: str, raw: dict[str, Any], fields: dict, kind: str, class_names: list[str]) -> dict:
    row = {}
    for field, column in fields.items():
        value = [raw[c] for c in column] if isinstance(column, tuple) else raw[column]
        if value is not None:  # a null cell reads as a missing field
            row[field] = value
    if class_names and isinstance(row.get("label"), int) and not isinstance(row["label"], bool):
        label = row["label"]
        if not 0 <= label < len(class_names):
            raise DataError(f"{where}: field 'label': {label} is not a class id of the label column "
                            f"(0 to {len(class_names) - 1}: {', '.join(class_names[:8])}"
                            f"{', ...' if len(class_names) > 8 else ''}); a test split whose labels are "
                            f"hidden (GLUE's are -1)? score another split: task.split.test=validation")
        row["label"] = class_names[label]
    return mcq_from_text(where, row) if kind == "mcq" else row
