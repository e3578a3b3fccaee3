"""Strict JSONL loaders for the task data, and the text of a multiple-choice example.

Every error names the file and the 1-based line, so a bad row is found without a debugger.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

FieldTypes = Mapping[str, type | tuple[type, ...]]
CLASSIFICATION_FIELDS: FieldTypes = {"text": str, "label": (str, int)}
MCQ_FIELDS: FieldTypes = {"question": str, "options": list, "answer": int}


class DataError(ValueError):
    """A data file that is missing or holds a row the task cannot use."""


def resolve_data_path(p: str | Path) -> Path:
    """An absolute path as is; a relative one against the current directory when the file is
    there, else against the project root (so `data/wordnet_topics/train.jsonl` works anywhere)."""
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def _type_name(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _is_instance(value: object, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not an int label or index
        return False
    return isinstance(value, types)


def _numbered_rows(path: str | Path, fields: FieldTypes, limit: int) -> list[tuple[str, dict]]:
    """(where, row) pairs, `where` being "file:line" for error messages."""
    resolved = resolve_data_path(path)
    if not resolved.is_file():
        raise DataError(f"{path}: data file not found (looked at {resolved.absolute()})")
    rows: list[tuple[str, dict]] = []
    with open(resolved, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for name, expected in fields.items():
                if name not in row:
                    raise DataError(f"{where}: missing field '{name}'")
                if not _is_instance(row[name], expected):
                    raise DataError(f"{where}: field '{name}': expected {_type_name(expected)}, "
                                    f"got {type(row[name]).__name__}")
            rows.append((where, row))
            if 0 < limit <= len(rows):
                break
    return rows


def read_jsonl(path: str | Path, fields: FieldTypes, limit: int = 0) -> list[dict]:
    """Rows of a JSONL file, each an object holding `fields` with the given types.

    Blank lines are skipped; limit > 0 keeps (and checks) only the first `limit` rows."""
    return [row for _, row in _numbered_rows(path, fields, limit)]


def load_classification(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"text": str, "label": str | int}."""
    return read_jsonl(path, CLASSIFICATION_FIELDS, limit)


def load_mcq(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"question": str, "options": [2+ distinct str], "answer": index into options}."""
    rows = _numbered_rows(path, MCQ_FIELDS, limit)
    for where, row in rows:
        options = row["options"]
        if not 2 <= len(options) <= len(LETTERS):
            raise DataError(f"{where}: field 'options': expected 2 to {len(LETTERS)} options, "
                            f"got {len(options)}")
        for i, option in enumerate(options):
            if not isinstance(option, str):
                raise DataError(f"{where}: field 'options': option {i} is "
                                f"{type(option).__name__}, expected str")
        if len(set(options)) != len(options):
            raise DataError(f"{where}: field 'options': options repeat: {options}")
        if not 0 <= row["answer"] < len(options):
            raise DataError(f"{where}: field 'answer': {row['answer']} is out of range "
                            f"for {len(options)} options")
    return [row for _, row in rows]


def mcq_prompt(question: str, options: list[str]) -> str:
    """The user message of a multiple-choice example:

    Which word has this definition?
    <question>

    A. <option 0>
    B. <option 1>
    ...
    Answer with the letter and the word."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return ("Which word has this definition?\n" + question + "\n\n" + "\n".join(lines)
            + "\nAnswer with the letter and the word.")


def mcq_answer(options: list[str], i: int) -> str:
    """The assistant reply for option i, e.g. "B. w2": the SFT target, and the string the
    evaluator scores by log-likelihood for each option."""
    return f"{LETTERS[i]}. {options[i]}"
