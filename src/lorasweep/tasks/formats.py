"""Strict JSONL and CSV loaders for the task data, the row checks they share with datasets read
through the `datasets` library (tasks/hf_data.py: check_rows), and the text of a multiple-choice example.

Formats (one object per line in JSONL; one row per record in CSV, header first):
- classification  {"text", "label"}                                 optional "text_pair" (sentence pairs)
- mcq             {"question", "options": [...], "answer": index}   optional "system"
- chat            {"messages": [{"role", "content"}, ...]}           system first (optional), last turn
                  the assistant's; CSV columns user, assistant and optional system (one exchange)
- completion      {"prompt", "completion"}
In CSV, mcq's options are a JSON list ('["a", "b"]') and answer an index or a letter.
Every error names the file and the 1-based line (a dataset: its split and row index), so a bad row
is found without a debugger.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
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
    records = _csv_records(path, resolved) if is_csv else _jsonl_records(path, resolved)
    if is_csv:
        records = ((where, from_csv(where, row)) for where, row in records)
    return checked_fields(records, fields, limit)


def checked_fields(records: Iterable[tuple[str, dict]], fields: FieldTypes, limit: int = 0) -> list[tuple[str, dict]]:
    """The (where, row) pairs of `records` whose rows hold `fields` with their types; the first that
    does not is a DataError naming its `where` (a file's line, a dataset split's row) and the field.
    limit > 0 keeps (and checks) only the first `limit` rows."""
    rows: list[tuple[str, dict]] = []
    for where, row in records:
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


def mcq_from_text(where: str, row: dict) -> dict:
    """An mcq row whose options may be a JSON list in a string and whose answer may be an index or a
    letter in a string (a CSV cell; a dataset's "B" column), in the JSONL form."""
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
    """Rows {"text": str, "label": str | int} and optionally "text_pair": str (a second text, as
    GLUE's sentence pairs)."""
    return check_rows("classification", _numbered_rows(path, {}, limit, _csv_as_is))


def load_completion(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"prompt": str, "completion": str}: the model learns to continue the prompt."""
    return check_rows("completion", _numbered_rows(path, {}, limit, _csv_as_is))


def load_chat(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"messages": [{"role", "content"}, ...]}: an optional system message first, then user
    and assistant turns; the last is the assistant's (the SFT target and what is evaluated)."""
    return check_rows("chat", _numbered_rows(path, {}, limit, _chat_csv))


def load_mcq(path: str | Path, limit: int = 0) -> list[dict]:
    """Rows {"question": str, "options": [2+ distinct str], "answer": index into options}."""
    return check_rows("mcq", _numbered_rows(path, {}, limit, mcq_from_text))


def check_rows(kind: str, records: Iterable[tuple[str, dict]], limit: int = 0) -> list[dict]:
    """The rows of `records` ((where, row) pairs: a file's lines, a dataset split's rows) checked
    as task format `kind` reads them; the first bad one is a DataError naming its `where`."""
    fields, check = _ROW_CHECKS[kind]
    rows = checked_fields(records, fields, limit)
    for where, row in rows:
        check(where, row)
    return [row for _, row in rows]


def _optional_str(where: str, row: dict, name: str) -> None:
    if name in row and not isinstance(row[name], str):
        raise DataError(f"{where}: field '{name}': expected str, got {type(row[name]).__name__}")


def _check_classification(where: str, row: dict) -> None:
    _optional_str(where, row, "text_pair")


def _check_completion(where: str, row: dict) -> None:
    pass


def _check_chat(where: str, row: dict) -> None:
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


def _check_mcq(where: str, row: dict) -> None:
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
    _optional_str(where, row, "system")
    if not 0 <= row["answer"] < len(options):
        raise DataError(f"{where}: field 'answer': {row['answer']} is out of range "
                        f"for {len(options)} options")


# Each format's required fields with their types, and its checks beyond them.
_ROW_CHECKS = {"classification": (CLASSIFICATION_FIELDS, _check_classification),
               "mcq": (MCQ_FIELDS, _check_mcq),
               "chat": (CHAT_FIELDS, _check_chat),
               "completion": (COMPLETION_FIELDS, _check_completion)}


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
