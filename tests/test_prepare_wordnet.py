"""scripts/prepare_wordnet.py on the real WordNet 3.0 noun file (Debian's wordnet-base)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDNET = Path("/usr/share/wordnet")

_spec = importlib.util.spec_from_file_location("prepare_wordnet", ROOT / "scripts/prepare_wordnet.py")
prep = sys.modules["prepare_wordnet"] = importlib.util.module_from_spec(_spec)  # dataclasses need it
_spec.loader.exec_module(prep)

SIZES = {"train": 300, "validation": 50, "test": 100}


def _require_wordnet() -> Path:
    data_noun = WORDNET / "data.noun"
    if not data_noun.is_file():
        pytest.fail(f"{data_noun} is missing: these tests read the real WordNet; "
                    "install it with `apt-get install wordnet-base`")
    return data_noun


@pytest.fixture(scope="module")
def all_synsets():
    return prep.parse_data_noun(_require_wordnet())


@pytest.fixture(scope="module")
def slice_synsets(tmp_path_factory):
    """Every 8th line of the real data.noun (~10k synsets, all classes), parsed from a copy."""
    lines = _require_wordnet().read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path_factory.mktemp("wn") / "data.noun"
    path.write_text("".join(line for i, line in enumerate(lines) if line.startswith("  ") or i % 8 == 0))
    return prep.parse_data_noun(path)


def test_class_numbers_match_real_synsets(all_synsets):
    by_offset = {s.offset: s for s in all_synsets}
    assert set(s.label for s in all_synsets) == set(prep.NOUN_CLASSES.values())
    assert len(prep.NOUN_CLASSES) == 26
    for offset, word, label in [
        (1740, "entity", "noun.Tops"), (2084071, "dog", "noun.animal"),
        (2958343, "car", "noun.artifact"), (12268246, "oak", "noun.plant"),
        (7516354, "anger", "noun.feeling"), (8932568, "Paris", "noun.location"),
        (7679356, "bread", "noun.food"), (15169873, "week", "noun.time"),
    ]:
        assert (by_offset[offset].lemmas[0], by_offset[offset].label) == (word, label)


def test_parse_line_format(tmp_path):
    # w_cnt is hex ("0b" = 11 words); examples after '; "' are dropped; short glosses skipped
    words = " ".join(f"w{i} 0" for i in range(11))
    path = tmp_path / "data.noun"
    path.write_text("  1 licence header\n"
                    f"00000001 06 n 0b {words} 000 | a thing used for things; \"an example\"  \n"
                    "00000002 18 n 01 x 0 000 | a man  \n")
    (s,) = prep.parse_data_noun(path)
    assert (s.offset, s.label, len(s.lemmas), s.lemmas[-1]) == (1, "noun.artifact", 11, "w10")
    assert s.gloss == "a thing used for things"


def test_glosses_are_clean(slice_synsets):
    for s in slice_synsets:
        assert '; "' not in s.gloss and s.gloss == s.gloss.strip() and len(s.gloss.split()) >= 3


def test_topics_deterministic_disjoint_labelled(slice_synsets):
    a, b = prep.build_topics(slice_synsets, SIZES), prep.build_topics(list(slice_synsets), SIZES)
    assert json.dumps(a) == json.dumps(b)
    assert {k: len(v) for k, v in a.items()} == SIZES
    texts = [{r["text"] for r in rows} for rows in a.values()]
    assert sum(map(len, texts)) == len(set().union(*texts)) == sum(SIZES.values())
    assert {r["label"] for rows in a.values() for r in rows} <= set(prep.NOUN_CLASSES.values())


def test_mcq_deterministic_disjoint_no_leak_same_class_distractors(slice_synsets):
    a, b = prep.build_mcq(slice_synsets, SIZES), prep.build_mcq(list(slice_synsets), SIZES)
    assert json.dumps(a) == json.dumps(b)
    assert {k: len(v) for k, v in a.items()} == SIZES
    questions = [{r["question"] for r in rows} for rows in a.values()]
    assert sum(map(len, questions)) == len(set().union(*questions))

    synset_of = {s.gloss: s for s in prep.unique_glosses(slice_synsets)}
    first_lemma_classes: dict[str, set[str]] = {}
    for s in slice_synsets:
        first_lemma_classes.setdefault(s.lemmas[0].replace("_", " "), set()).add(s.label)
    answers = []
    for r in (r for rows in a.values() for r in rows):
        s, options, answer = synset_of[r["question"]], r["options"], r["answer"]
        word = options[answer]
        answers.append(answer)
        assert word == s.lemmas[0].replace("_", " ")
        assert not re.search(rf"\b{re.escape(word)}\b", r["question"], re.IGNORECASE), r
        assert len(options) == 4 and len({o.lower() for o in options}) == 4
        own = {lemma.replace("_", " ").lower() for lemma in s.lemmas}
        for d in options[:answer] + options[answer + 1:]:
            assert d.lower() not in own
            assert s.label in first_lemma_classes[d], (d, s.label)
    assert min(answers.count(i) for i in range(4)) > 60  # 450 answers, ~112 per slot


def test_leaks():
    assert prep.leaks("fire brigade", "the fire department")
    assert prep.leaks("ax", "an ax with a long handle")
    assert not prep.leaks("ax", "a tool with a heavy axe head")
    assert not prep.leaks("cat", "a catapult")


def test_shipped_data_is_what_the_script_writes(tmp_path):
    """The files in data/ are regenerated byte for byte (needs the full noun file, ~2 s)."""
    _require_wordnet()
    prep.main(["--wordnet-dir", str(WORDNET), "--out", str(tmp_path)])
    for task in ("wordnet_topics", "wordnet_mcq"):
        for f in sorted((ROOT / "data" / task).iterdir()):
            assert (tmp_path / task / f.name).read_bytes() == f.read_bytes(), f
