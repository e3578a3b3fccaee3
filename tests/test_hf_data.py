"""Your own dataset through the `datasets` library (task=hf): a folder of parquet files, one of json
files and a save_to_disk folder, each made here and read through the same load_dataset /
load_from_disk code a hub id takes (offline: tests/conftest.py). Splits sliced and carved, columns
mapped, ClassLabel names, strict rows named by split and index, the data's identity in the run key;
a tiny end-to-end run through `python launch.py task=hf`."""
import json
import re

import pytest

from lorasweep.errors import ConfigError, DataError
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.tasks.task import load_task

from conftest import compose_config, launch

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402

SHORT = ["train.max_steps=2", "train.eval_steps=2", "train.batch_size=4", "train.eval_batch_size=4"]
FEATURES = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"]), "idx": Value("int32")})


def reviews(split: str, n: int) -> dict:
    return {"sentence": [f"{split} review {i} was {'good' if i % 2 else 'bad'}" for i in range(n)],
            "label": [i % 2 for i in range(n)], "idx": list(range(n))}


def topics(rows: dict[str, dict], features=FEATURES) -> DatasetDict:
    return DatasetDict({split: Dataset.from_dict(cols, features=features) for split, cols in rows.items()})


SOURCES = {"train": reviews("train", 20), "test": reviews("test", 8)}  # no validation split: eval is carved


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path, monkeypatch):
    """load_dataset's arrow cache in the test's folder (here and in launch()'s processes), not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    load_task.cache_clear()  # a dataset rewritten under the same spec is read again
    yield
    load_task.cache_clear()


def write(kind: str, folder, dd: DatasetDict):
    """The dataset as a parquet folder, a json folder (labels as their names: json has no ClassLabel)
    or a save_to_disk folder; returns the folder."""
    if kind == "disk":
        dd.save_to_disk(str(folder))
        return folder
    folder.mkdir(parents=True)
    for split, ds in dd.items():
        if kind == "parquet":
            ds.to_parquet(str(folder / f"{split}.parquet"))
        else:
            names = ds.features["label"].names
            lines = [{"sentence": r["sentence"], "label": names[r["label"]]} for r in ds]
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def hf(folder, *extra, model="tiny-bert", tmp_path=None):
    return ["task=hf", f"task.dataset={folder}", "task.columns.text=sentence", f"model={model}", *SHORT,
            *([f"results_dir={tmp_path / 'results'}"] if tmp_path else []), *extra]


def plan(args):
    return plan_run(compose_config(args))


# --- each local source, classification -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet", "json", "disk"])
def test_each_source_reads_as_classification_rows_with_its_class_names(tmp_path, capsys, kind):
    folder = write(kind, tmp_path / kind, topics(SOURCES))
    p = plan(hf(folder))
    task = p.task
    assert task.labels == ["neg", "pos"]  # ClassLabel's names (json: the names seen, sorted)
    assert p.spec.task.name == kind and p.spec.slug.startswith(f"tiny-bert-{kind}-lora")
    assert (len(task.train), len(task.eval), len(task.test)) == (18, 2, 8)
    assert task.test[3] == {"text": "test review 3 was good", "label": "pos"}  # idx: no field of classification
    assert {r["text"] for r in task.train} | {r["text"] for r in task.eval} == set(SOURCES["train"]["sentence"])
    said = capsys.readouterr().err
    assert (f"task {kind}: {folder} has no validation split: eval is 2 rows of task.split.train='train' drawn "
            f"at random (task.eval_size=0.1, task.split_seed=0); train keeps the other 18") in said
    assert re.fullmatch(r"[0-9a-f]{16}", p.spec.task.fingerprint)


def test_the_carved_eval_follows_its_seed_and_size(tmp_path):
    folder = write("disk", tmp_path / "d", topics(SOURCES))
    first, again = plan(hf(folder)), plan(hf(folder))
    assert first.task.eval == again.task.eval and first.spec.run_key == again.spec.run_key
    other = plan(hf(folder, "task.split_seed=1"))
    assert other.task.eval != first.task.eval and other.spec.run_key != first.spec.run_key
    sized = plan(hf(folder, "task.eval_size=5"))
    assert (len(sized.task.train), len(sized.task.eval)) == (15, 5)
    assert [r["text"] for r in sized.task.train] == sorted((r["text"] for r in sized.task.train),
                                                           key=lambda t: int(t.split()[2]))  # in order


def test_splits_slice_as_datasets_spells_them_and_a_validation_split_is_the_eval(tmp_path, capsys):
    folder = write("parquet", tmp_path / "p", topics({**SOURCES, "validation": reviews("validation", 6)}))
    p = plan(hf(folder, "task.split.train='train[:50%]'", "task.split.test='test[-3:]+validation[:1]'",
                "+task.tests.first='test[:2]'", "task.max_train=4"))
    assert [r["text"] for r in p.task.train] == [f"train review {i} was {'good' if i % 2 else 'bad'}" for i in range(4)]
    assert len(p.task.eval) == 6 and p.task.eval[0]["text"].startswith("validation review 0")
    assert [r["text"].split(" was")[0] for r in p.task.test] == ["test review 5", "test review 6", "test review 7",
                                                                 "validation review 0"]
    assert len(p.task.tests["first"]) == 2 and "no validation split" not in capsys.readouterr().err


def test_a_changed_dataset_is_a_new_run_key_and_jsonl_keys_keep_their_fields(tmp_path):
    folder = write("parquet", tmp_path / "p", topics(SOURCES))
    before = plan(hf(folder)).spec
    assert before.defining()["task"]["dataset"] == str(folder)
    assert before.defining()["task"]["columns"] == {"text": "sentence"}
    changed = {"train": SOURCES["train"], "test": {**SOURCES["test"], "label": [1] + SOURCES["test"]["label"][1:]}}
    (folder / "test.parquet").unlink()
    topics(changed)["test"].to_parquet(str(folder / "test.parquet"))
    load_task.cache_clear()
    after = plan(hf(folder)).spec
    assert after.task.fingerprint != before.task.fingerprint and after.run_key != before.run_key
    jsonl = plan(["task=wordnet_topics", "model=tiny-bert", "task.max_train=4", "task.max_eval=2", "task.max_test=2"])
    assert set(jsonl.spec.defining()["task"]) == {"name", "kind", "train", "eval", "test", "labels", "max_train",
                                                  "max_eval", "max_test"}  # earlier runs keep their keys


def test_sentence_pairs_and_mcq_columns(tmp_path):
    pairs = Dataset.from_dict({"s1": ["a cat", "a dog"], "s2": ["an animal", "a car"], "label": [1, 0]})
    folder = write("disk", tmp_path / "pairs", DatasetDict({"train": pairs, "validation": pairs, "test": pairs}))
    p = plan(["task=hf", f"task.dataset={folder}", "model=tiny-bert", "task.columns.text=s1",
              "task.columns.text_pair=s2"])
    assert p.task.test[0] == {"text": "a cat", "text_pair": "an animal", "label": 1} and p.task.labels == ["0", "1"]
    from lorasweep.model.loading import load_tokenizer
    tok = load_tokenizer(p.spec.model)
    from lorasweep.tasks.classification import encode
    [enc] = encode(p.task.test[:1], tok, p.task.label_ids, 32)
    assert tok.decode(enc["input_ids"]).count(tok.sep_token) == 2  # [CLS] a [SEP] b [SEP]
    qa = Dataset.from_dict({"q": ["2+2?", "3+3?"], "A": ["4", "5"], "B": ["3", "6"], "C": ["1", "2"],
                            "key": ["A", "B"]})
    folder = write("disk", tmp_path / "qa", DatasetDict({"train": qa, "validation": qa, "test": qa}))
    p = plan(["task=hf", f"task.dataset={folder}", "task.format=mcq", "model=tiny-qwen3", "task.columns.question=q",
              "task.columns.options=[A,B,C]", "task.columns.answer=key"])
    assert p.task.test == [{"question": "2+2?", "options": ["4", "3", "1"], "answer": 0},
                           {"question": "3+3?", "options": ["5", "6", "2"], "answer": 1}]


# --- refused before any weight loads, in one line -------------------------------------------------

def bad_rows(tmp_path):
    test = {**SOURCES["test"], "sentence": SOURCES["test"]["sentence"][:5] + [None] + SOURCES["test"]["sentence"][6:]}
    return write("parquet", tmp_path / "bad", topics({"train": SOURCES["train"], "test": test}))


@pytest.mark.parametrize("extra,error,message", [
    (["task.split.eval=valid"], ConfigError, r"^task.split.eval='valid' names no split of .*/p: its splits are train, test$"),
    (["task.split.test='tset[:5]'"], ConfigError, r"^task.split.test='tset\[:5\]' names no split .*: its splits are train, test$"),
    (["task.columns.label=stars"], ConfigError,
     r"^task.columns.label='stars' names no column of .*/p \(splits test, train\): its columns are sentence, label, idx$"),
    (["task.columns.text=null"], ConfigError,
     r"^.*/p has no column 'text' for classification's field 'text': name the column that holds it with "
     r"task.columns.text=COLUMN \(its columns are sentence, label, idx\)$"),
    (["task.eval_size=20"], DataError, r"task.eval_size=20: carving an eval of 20 rows from the 20 .* leaves no train"),
])
def test_an_unknown_split_or_column_names_the_valid_ones(tmp_path, extra, error, message):
    folder = write("parquet", tmp_path / "p", topics(SOURCES))
    with pytest.raises(error, match=message):
        plan(hf(folder, *extra))


def test_a_hidden_label_is_named_by_split_and_index(tmp_path):
    test = {**SOURCES["test"], "label": [0, 1, -1, 0, 1, 0, 1, 0]}  # GLUE's test sets hide theirs as -1
    folder = write("disk", tmp_path / "glue", topics({"train": SOURCES["train"], "test": test}))
    with pytest.raises(DataError, match=rf"^{folder} test\[2\]: field 'label': -1 is not a class id of the label "
                                        r"column \(0 to 1: neg, pos\); .* task.split.test=validation$"):
        plan(hf(folder))


def test_one_local_file_is_the_split_train_sliced_into_train_and_test(tmp_path):
    (tmp_path / "one").mkdir()
    topics(SOURCES)["train"].to_parquet(str(tmp_path / "one" / "all.parquet"))
    p = plan(hf(tmp_path / "one" / "all.parquet", "task.split.train='train[:-5]'", "task.split.test='train[-5:]'"))
    assert (len(p.task.train), len(p.task.eval), len(p.task.test)) == (13, 2, 5) and p.task.labels == ["neg", "pos"]
    assert p.spec.task.name == "all.parquet"
    with pytest.raises(DataError, match=r"^task.dataset='.*/one' task.subset='sst2': cannot load it \(.*\)$"):
        plan(hf(tmp_path / "one", "task.subset=sst2"))


def test_an_unreachable_hub_id_is_one_line():
    with pytest.raises(DataError, match=r"^task.dataset='nobody/no_such_set': cannot load it \(.*\)$"):
        plan(["task=hf", "task.dataset=nobody/no_such_set", "model=tiny-bert"])


def test_cli_names_the_bad_row_by_split_and_index_before_loading(tmp_path):
    folder = bad_rows(tmp_path)
    proc = launch(hf(folder, tmp_path=tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {folder} test[5]: missing field 'text'"
    assert "Traceback" not in proc.stderr and "trainable of" not in proc.stderr
    assert not list(tmp_path.glob("results/*/result.json"))


# --- end to end -----------------------------------------------------------------------------------

def test_classification_from_a_parquet_folder_end_to_end(tmp_path):
    folder = write("parquet", tmp_path / "reviews", topics(SOURCES))
    proc = launch(hf(folder, tmp_path=tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reviews has no validation split: eval is 2 rows" in proc.stderr
    [path] = tmp_path.glob("results/*/result.json")
    result = json.loads(path.read_text())
    task = result["config"]["task"]
    assert result["status"] == "done" and result["metrics"]["test"]["n"] == 8
    assert task["dataset"] == str(folder) and task["columns"] == {"text": "sentence"}
    assert task["train"] == "train" and task["eval"] == "" and task["test"] == "test"
    assert re.fullmatch(r"[0-9a-f]{16}", task["fingerprint"])
    assert result["run_key"] == plan(hf(folder, tmp_path=tmp_path)).spec.run_key  # planned again: the same run
    assert path.parent.name == f"tiny-bert-reviews-lora-qkvo-r8-{result['run_key']}"


def test_completion_from_a_save_to_disk_folder_end_to_end(tmp_path):
    rows = {split: {"question": [f"list files in dir{i}:" for i in range(n)], "answer": [f" ls dir{i}" for i in range(n)]}
            for split, n in (("train", 8), ("validation", 4), ("test", 6))}
    folder = write("disk", tmp_path / "nl2sh", DatasetDict({s: Dataset.from_dict(c) for s, c in rows.items()}))
    result = run_config(compose_config(["task=hf", f"task.dataset={folder}", "task.format=completion",
                                        "task.columns.prompt=question", "task.columns.completion=answer",
                                        "model=tiny-qwen3", *SHORT, f"results_dir={tmp_path / 'results'}"]))
    test = result["metrics"]["test"]
    assert result["status"] == "done" and test["n"] == 6 and 0 <= test["token_accuracy"] <= 1
    assert result["objective"] == {"name": "test.token_accuracy", "value": test["token_accuracy"],
                                   "direction": "maximize"}
    assert result["config"]["task"]["columns"] == {"prompt": "question", "completion": "answer"}
    assert [c["step"] for c in result["curve"]] == [0, 2]
    from lorasweep.run.adapters import read_run  # an exported run finds its dataset task again
    [folder] = (tmp_path / "results").glob("*/result.json")
    run = read_run(folder.parent)
    assert run.task.columns == (("prompt", "question"), ("completion", "answer"))
    assert run.task.fingerprint == result["config"]["task"]["fingerprint"] and load_task(run.task).test[0] == {
        "prompt": "list files in dir0:", "completion": " ls dir0"}
