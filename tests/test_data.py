"""Strict loaders: every error names file, line and field; the shipped data loads exactly."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from lorasweep.config.paths import resolve_data_path
from lorasweep.errors import DataError
from lorasweep.tasks.formats import load_classification, load_mcq, mcq_answer, mcq_prompt, read_jsonl

GOOD_MCQ = {"question": "a domestic feline", "options": ["cat", "dog", "cow", "hen"], "answer": 0}


def write(tmp_path: Path, *lines: str, name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def row(**kw) -> str:
    return json.dumps(kw)


@pytest.mark.parametrize("bad_line, needles", [
    ('{"text": "a b c", "label": ', ["invalid JSON"]),
    ('["text", "label"]', ["JSON object", "list"]),
    (row(text="a b c"), ["missing field 'label'"]),
    (row(text=3, label="x"), ["field 'text'", "expected str", "got int"]),
    (row(text="a b c", label=1.5), ["field 'label'", "expected str or int", "got float"]),
    (row(text="a b c", label=True), ["field 'label'", "got bool"]),
])
def test_classification_errors_name_file_line_and_field(tmp_path, bad_line, needles):
    # line 1 good, line 2 blank (skipped but counted), line 3 bad
    path = write(tmp_path, row(text="a b c", label="x"), "", bad_line)
    with pytest.raises(DataError) as e:
        load_classification(path)
    for needle in ["rows.jsonl:3"] + needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("change, needles", [
    ({"answer": 4}, ["field 'answer'", "out of range"]),
    ({"answer": -1}, ["field 'answer'", "out of range"]),
    ({"answer": "A"}, ["field 'answer'", "expected int", "got str"]),
    ({"options": ["cat", 2, "cow", "hen"]}, ["field 'options'", "option 1", "int"]),
    ({"options": ["cat"]}, ["field 'options'", "got 1"]),
    ({"options": ["cat", "cat", "cow", "hen"]}, ["field 'options'", "repeat"]),
    ({"options": "cat dog"}, ["field 'options'", "expected list", "got str"]),
    ({"question": None}, ["field 'question'", "expected str", "got NoneType"]),
])
def test_mcq_errors_name_file_line_and_field(tmp_path, change, needles):
    path = write(tmp_path, row(**GOOD_MCQ), row(**GOOD_MCQ), row(**{**GOOD_MCQ, **change}), name="q.jsonl")
    with pytest.raises(DataError) as e:
        load_mcq(path)
    for needle in ["q.jsonl:3"] + needles:
        assert needle in str(e.value)


def test_mcq_missing_field(tmp_path):
    bad = {k: v for k, v in GOOD_MCQ.items() if k != "options"}
    with pytest.raises(DataError, match=r"q\.jsonl:1: missing field 'options'"):
        load_mcq(write(tmp_path, row(**bad), name="q.jsonl"))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl.*not found"):
        load_classification(tmp_path / "nowhere.jsonl")
    with pytest.raises(DataError, match="data/nowhere.jsonl.*not found"):
        load_mcq("data/nowhere.jsonl")


def test_limit_reads_and_checks_only_the_first_rows(tmp_path):
    path = write(tmp_path, row(text="a", label=0), "", row(text="b", label=1), "not json")
    assert read_jsonl(path, {"text": str}, limit=2) == [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    with pytest.raises(DataError, match="rows.jsonl:4: invalid JSON"):
        read_jsonl(path, {"text": str})


def test_relative_paths_resolve_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("data/wordnet_topics/train.jsonl") == ROOT / "data/wordnet_topics/train.jsonl"
    assert len(load_classification("data/wordnet_topics/validation.jsonl", limit=7)) == 7
    (tmp_path / "local.jsonl").write_text(row(text="a", label="x") + "\n")
    assert resolve_data_path("local.jsonl") == Path("local.jsonl")


@pytest.mark.parametrize("split, n", [("train", 4000), ("validation", 500), ("test", 1000)])
def test_shipped_topics(split, n):
    rows = load_classification(f"data/wordnet_topics/{split}.jsonl")
    labels = json.loads((ROOT / "data/wordnet_topics/labels.json").read_text())
    assert len(rows) == n
    assert len(labels) == 26 and labels == sorted(labels)
    assert {r["label"] for r in rows} <= set(labels)


@pytest.mark.parametrize("split, n", [("train", 3000), ("validation", 300), ("test", 500)])
def test_shipped_mcq(split, n):
    rows = load_mcq(f"data/wordnet_mcq/{split}.jsonl")
    assert len(rows) == n
    for r in rows:
        assert len(r["options"]) == 4 and 0 <= r["answer"] < 4
        assert len({o.lower() for o in r["options"]}) == 4


def test_shipped_splits_are_disjoint():
    for task, key in [("wordnet_topics", "text"), ("wordnet_mcq", "question")]:
        seen = [{r[key] for r in read_jsonl(f"data/{task}/{s}.jsonl", {key: str})}
                for s in ("train", "validation", "test")]
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_mcq_text():
    options = ["w1", "w2", "w3", "w4"]
    assert mcq_prompt("a gloss", options) == (
        "Which word has this definition?\na gloss\n\nA. w1\nB. w2\nC. w3\nD. w4\n"
        "Answer with the letter and the word.")
    assert mcq_answer(options, 1) == "B. w2"
    # task.answer=option: the word alone is the reply, and the question asks for it
    assert mcq_prompt("a gloss", options, answer="option").endswith("D. w4\nAnswer with the word.")
    assert mcq_answer(options, 1, "option") == "w2"
