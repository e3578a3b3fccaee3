"""Strict JSONL and CSV loaders for the task data, and the text of a multiple-choice example.

Formats (one object per line in JSONL; one row per record in CSV, header first):
- classification  {"text", "label"}
- mcq             {"question", "options": [...], "answer": index}   optional "system"
- chat            {"messages": [{"role", "content"}, ...]}           system first (optional), last turn
                  the assistant's; CSV columns user, assistant and optional system (one exchange)
- completion      {"prompt", "completion"}
In CSV, mcq's options are a JSON list ('["a", "b"]') and answer an index or a letter.
Every error names the file and the 1-based line, so a bad row is found without a debugger.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from ..config.paths import resolve_data_path
from ..errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

FieldTypes = Mapping[str, type | tuple[type, ...]]
CLASSIFICATION_FIELDS: FieldTypes = {"text": str, "label": (str, int)}
MCQ_FIELDS: FieldTypes = {"question": str, "options": list, "answer": int}
CHAT_FIELDS: FieldTypes = {"messages": list}
COMPLETION_FIELDS: FieldTypes = {"prompt": str, "completion": str}
CHAT_ROLES = ("system", "user", "assistant")


def _type_name(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _is_instance(value: object, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not an int label or index
        return False
    return isinstance(value, types)


def _numbered_rows(path: str | Path, fields: FieldTypes, limit: int,
                   from_csv=None) -> list[tuple[str, dict]]:
    """(where, row) pairs, `where` being "file:line" for error messages. A .csv file is read with
    its header, and each record turned into the JSONL form by `from_csv(where, record)`."""
    resolved = resolve_data_path(path)
    if not resolved.is_file():
        raise DataError(f"{path}: data file not found (looked at {resolved.absolute()})")
    is_csv = resolved.suffix.lower() == ".csv"
    if is_csv and from_csv is None:
        raise DataError(f"{path}: this format cannot be read from CSV; use JSONL")
    rows: list[tuple[str, dict]] = []
    records = _csv_records(path, resolved) if is_csv else _jsonl_records(path, resolved)
    for where, row in records:
        if is_csv:
            row = from_csv(where, row)
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


def _jsonl_records(path: str | Path, resolved: Path):
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
            yield where, row


def _csv_records(path: str | Path, resolved: Path):
    """Records as {column: str}; `where` is the line the record starts on (quoted fields may span
    lines). Empty cells are absent, so a missing value reads as a missing field."""
    with open(resolved, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        start = reader.line_num + 2  # the header is line 1
        for record in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in record:
                raise DataError(f"{where}: more cells than the header's {len(reader.fieldnames)} columns")
            values = {k.strip(): v for k, v in record.items() if k and v not in (None, "")}
            if values:
                yield where, values


def _csv_as_is(where: str, row: dict) -> dict:
    """Formats whose CSV columns are their fields (classification, completion)."""
    return row


def _mcq_csv(where: str, row: dict) -> dict:
    row = dict(row)
    if isinstance(row.get("options"), str):
        try:
            row["options"] = json.loads(row["options"])
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'options': expected a JSON list such as "
                            f'["a", "b"], got {row["options"][:40]!r}') from None
    answer = row.get("answer")
    if isinstance(answer, str):
        a = answer.strip()
        if a.isdigit():
            row["answer"] = int(a)
        elif len(a) == 1 and a.upper() in LETTERS:
            row["answer"] = LETTERS.index(a.upper())
        else:
            raise DataError(f"{where}: field 'answer': expected an option index or letter, got {answer!r}")
    return row


def _chat_csv(where: str, row: dict) -> dict:
    for name in ("user", "assistant"):
        if name not in row:
            raise DataError(f"{where}: missing field '{name}' (a chat CSV has columns user, "
                            f"assistant and optionally system)")
    messages = [{"role": "system", "content": row["system"]}] if "system" in row else []
    return {"messages": messages + [{"role": "user", "content": row["user"]},
                                    {"role": "assistant", "content": row["assistant"]}]}


def read_jsonl(path: str | Path, fields: FieldTypes, limit: int = 0) -> list[dict]:
    """Rows of a JSONL file, each an object holding `fields` with the given types.

    Blank lines are skipped; limit > 0 keeps (and checks) only the first `limit` rows."""
    return [row for _, row in _numbered_rows(path, fields, limit)]


def load_classification(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"text": str, "label": str | int}."""
    return [row for _, row in _numbered_rows(path, CLASSIFICATION_FIELDS, limit, _csv_as_is)]


def load_completion(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"prompt": str, "completion": str}: the model learns to continue the prompt."""
    return [row for _, row in _numbered_rows(path, COMPLETION_FIELDS, limit, _csv_as_is)]


def load_chat(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"messages": [{"role", "content"}, ...]}: an optional system message first, then user
    and assistant turns; the last is the assistant's (the SFT target and what is evaluated)."""
    rows = _numbered_rows(path, CHAT_FIELDS, limit, _chat_csv)
    for where, row in rows:
        messages = row["messages"]
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise DataError(f"{where}: field 'messages': message {i} is {type(m).__name__}, "
                                f"expected an object with role and content")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    raise DataError(f"{where}: field 'messages': message {i} has no string '{key}'")
            if m["role"] not in CHAT_ROLES:
                raise DataError(f"{where}: field 'messages': message {i} has role {m['role']!r}; "
                                f"valid are {', '.join(CHAT_ROLES)}")
            if m["role"] == "system" and i != 0:
                raise DataError(f"{where}: field 'messages': a system message must come first (message {i})")
        roles = [m["role"] for m in messages]
        if "user" not in roles or roles[-1] != "assistant":
            raise DataError(f"{where}: field 'messages': needs a user message and must end with "
                            f"the assistant's reply (roles: {roles})")
    return [row for _, row in rows]


def load_mcq(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"question": str, "options": [2+ distinct str], "answer": index into options}."""
    rows = _numbered_rows(path, MCQ_FIELDS, limit, _mcq_csv)
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
        if "system" in row and not isinstance(row["system"], str):
            raise DataError(f"{where}: field 'system': expected str, got {type(row['system']).__name__}")
        if not 0 <= row["answer"] < len(options):
            raise DataError(f"{where}: field 'answer': {row['answer']} is out of range "
                            f"for {len(options)} options")
    return [row for _, row in rows]


def mcq_prompt(question: str, options: list[str], instruction: str = "", answer: str = "letter") -> str:
    """The user message of a multiple-choice example:

    Which word has this definition?
    <question>

    A. <option 0>
    B. <option 1>
    ...
    Answer with the letter and the word.     (answer="option": "Answer with the word.")

    With an `instruction` (your own data), the question stands alone and the instruction ends it."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    if instruction:
        return question + "\n\n" + "\n".join(lines) + "\n" + instruction
    return ("Which word has this definition?\n" + question + "\n\n" + "\n".join(lines)
            + ("\nAnswer with the letter and the word." if answer == "letter" else "\nAnswer with the word."))


def mcq_answer(options: list[str], i: int, answer: str = "letter") -> str:
    """The assistant reply for option i, e.g. "B. w2" (answer="option": "w2"): the SFT target, and
    the string the evaluator scores by log-likelihood for each option."""
    return f"{LETTERS[i]}. {options[i]}" if answer == "letter" else options[i]
