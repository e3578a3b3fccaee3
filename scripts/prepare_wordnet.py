"""Build the two WordNet tasks that ship in data/ from Debian's wordnet-base.

    python scripts/prepare_wordnet.py [--wordnet-dir /usr/share/wordnet] [--out data]

Writes data/wordnet_topics (gloss -> one of 26 noun lexicographer classes) and data/wordnet_mcq
(gloss -> which of 4 words, distractors from the same class). Deterministic: seed 0, inputs sorted
by synset offset, so every run writes the same bytes. Needs `apt-get install wordnet-base`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# lexnames(5WN): file numbers 03..28 are the noun lexicographer files.
NOUN_CLASSES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event",
    12: "noun.feeling", 13: "noun.food", 14: "noun.group", 15: "noun.location", 16: "noun.motive",
    17: "noun.object", 18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant",
    21: "noun.possession", 22: "noun.process", 23: "noun.quantity", 24: "noun.relation",
    25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}
TOPICS_SIZES = {"train": 4000, "validation": 500, "test": 1000}
MCQ_SIZES = {"train": 3000, "validation": 300, "test": 500}
SEED = 0
MIN_GLOSS_WORDS = 3  # "a cat", "the act" and the like say nothing about the class
MAX_LEMMA_WORDS = 3
SOURCE = "/usr/share/doc/wordnet-base/copyright"


@dataclass(frozen=True)
class Synset:
    offset: int
    label: str  # lexicographer class, e.g. "noun.artifact"
    lemmas: tuple[str, ...]  # as in WordNet, underscores included
    gloss: str  # cleaned: definition only, no example sentences


def clean_gloss(raw: str) -> str:
    """The definition part of a gloss: drop quoted examples (`; "...`) and trailing separators."""
    text = raw.strip()
    text = text.split('; "', 1)[0] if not text.startswith('"') else ""
    return text.strip().rstrip(";").strip()


def parse_data_noun(path: str | Path) -> list[Synset]:
    """Every synset of a WordNet data.noun file with a usable gloss, in file (offset) order."""
    synsets = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            lex_filenum, w_cnt = int(fields[1]), int(fields[3], 16)
            if lex_filenum not in NOUN_CLASSES:
                raise ValueError(f"{path}: synset {fields[0]}: lex_filenum {lex_filenum} "
                                 "is not a noun class")
            lemmas = tuple(fields[4 + 2 * i] for i in range(w_cnt))
            text = clean_gloss(gloss)
            if len(text.split()) < MIN_GLOSS_WORDS:
                continue
            synsets.append(Synset(int(fields[0]), NOUN_CLASSES[lex_filenum], lemmas, text))
    return synsets


def unique_glosses(synsets: list[Synset]) -> list[Synset]:
    """Drop synsets whose cleaned gloss is shared with another synset (it could sit in two splits)."""
    counts = Counter(s.gloss for s in synsets)
    return [s for s in synsets if counts[s.gloss] == 1]


def _split(rows: list, sizes: dict[str, int]) -> dict[str, list]:
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = rows[start:start + n]
        start += n
    if start > len(rows):
        raise ValueError(f"asked for {start} rows in all, only {len(rows)} eligible")
    return out


def build_topics(synsets: list[Synset], sizes: dict[str, int] = TOPICS_SIZES,
                 seed: int = SEED) -> dict[str, list[dict]]:
    """Disjoint random splits of {"text", "label"} rows, with the natural class distribution."""
    pool = sorted(unique_glosses(synsets), key=lambda s: s.offset)
    random.Random(seed).shuffle(pool)
    rows = [{"text": s.gloss, "label": s.label} for s in pool[:sum(sizes.values())]]
    return _split(rows, sizes)


def answer_word(synset: Synset) -> str | None:
    """The synset's first lemma as a question answer, or None when it is unusable."""
    word = synset.lemmas[0].replace("_", " ")
    if re.search(r"[\d()]", word) or len(word.split()) > MAX_LEMMA_WORDS:
        return None
    return word


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def leaks(word: str, gloss: str) -> bool:
    """Whether the gloss gives the answer away: the word, or any of its words of 3+ letters,
    appears in it as a whole word (case-insensitive)."""
    answer, text = _words(word), _words(gloss)
    if any(len(w) >= 3 for w in answer if w in set(text)):
        return True
    n = len(answer)
    return any(text[i:i + n] == answer for i in range(len(text) - n + 1))


def build_mcq(synsets: list[Synset], sizes: dict[str, int] = MCQ_SIZES,
              seed: int = SEED) -> dict[str, list[dict]]:
    """Disjoint splits of {"question", "options", "answer"} rows: which word has this gloss?

    Distractors are first lemmas of other synsets of the same class, distinct (case-insensitive)
    from each other and from every lemma of the answer synset, and capitalised like the answer
    when the class has enough such words (so "Einstein" is not the only proper noun among four
    options); the answer's slot is uniform."""
    synsets = sorted(unique_glosses(synsets), key=lambda s: s.offset)
    by_class: dict[str, list[str]] = {}  # label -> distinct usable first lemmas, in offset order
    by_case: dict[tuple[str, bool], list[str]] = {}  # (label, capitalised) -> the same, split
    seen: set[tuple[str, str]] = set()
    for s in synsets:
        word = answer_word(s)
        if word is not None and (s.label, word.lower()) not in seen:
            seen.add((s.label, word.lower()))
            by_class.setdefault(s.label, []).append(word)
            by_case.setdefault((s.label, word[0].isupper()), []).append(word)
    pool = [s for s in synsets if (w := answer_word(s)) is not None and not leaks(w, s.gloss)]
    rng = random.Random(seed)
    rng.shuffle(pool)
    rows, want = [], sum(sizes.values())
    for s in pool:
        if len(rows) == want:
            break
        word = answer_word(s)
        taken = {lemma.replace("_", " ").lower() for lemma in s.lemmas}
        candidates = by_case[s.label, word[0].isupper()]
        if len(candidates) < 3 + len(taken):
            candidates = by_class[s.label]
        # Sample a few extra so that dropping the answer's own lemmas still leaves three.
        k = min(len(candidates), 3 + len(taken))
        distractors = [w for w in rng.sample(candidates, k) if w.lower() not in taken][:3]
        if len(distractors) < 3:
            continue
        answer = rng.randrange(4)
        options = distractors[:answer] + [word] + distractors[answer:]
        rows.append({"question": s.gloss, "options": options, "answer": answer})
    return _split(rows, sizes)


def licence_text(copyright_file: str | Path = SOURCE) -> str:
    """The WordNet3.0 licence stanza of Debian's copyright file, as plain text."""
    lines = Path(copyright_file).read_text(encoding="utf-8").splitlines()
    start = lines.index("License: WordNet3.0") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:])
    return "\n".join(body).rstrip() + "\n"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_all(wordnet_dir: Path, out: Path,
              copyright_file: str | Path = SOURCE) -> dict[str, dict[str, list[dict]]]:
    """Parse, build both tasks and write them, with licences and labels.json, under `out`."""
    data_noun = wordnet_dir / "data.noun"
    if not data_noun.exists():
        sys.exit(f"{data_noun} not found: install WordNet with `apt-get install wordnet-base`")
    synsets = parse_data_noun(data_noun)
    tasks = {"wordnet_topics": build_topics(synsets), "wordnet_mcq": build_mcq(synsets)}
    header = "These files are derived from WordNet 3.0 by scripts/prepare_wordnet.py.\n\n"
    for task, splits in tasks.items():
        for split, rows in splits.items():
            write_jsonl(out / task / f"{split}.jsonl", rows)
        (out / task / "LICENSE").write_text(header + licence_text(copyright_file), encoding="utf-8")
    labels = sorted(NOUN_CLASSES.values())
    labels_json = json.dumps(labels, indent=1) + "\n"
    (out / "wordnet_topics" / "labels.json").write_text(labels_json, encoding="utf-8")
    return tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    tasks = write_all(args.wordnet_dir, args.out)
    for task, splits in tasks.items():
        print(task, {split: len(rows) for split, rows in splits.items()})


if __name__ == "__main__":
    main()
