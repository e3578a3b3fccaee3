"""Export after a sweep: a merged standalone model equals the adapted one; two adapters on one base switch."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lorasweep import export
from lorasweep.run.lifecycle import run_config

from conftest import ROOT, TINY_MCQ, TINY_TOPICS, compose_config


def run(overrides, results_dir):
    result = run_config(compose_config(overrides + [f"results_dir={results_dir}"]))
    return results_dir / f"{result['slug']}-{result['run_key']}"


def batch(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True)


TEXTS = ["a domesticated carnivorous mammal", "a building where people live", "the act of running fast"]


@pytest.mark.parametrize("base,method,auto", [(TINY_TOPICS, "lora", AutoModelForSequenceClassification),
                                              (TINY_MCQ, "dora", AutoModelForCausalLM)], ids=["cls-lora", "lm-dora"])
def test_merged_model_logits_equal_the_adapted_models(base, method, auto, results_dir, tmp_path):
    folder = run(base + [f"method={method}", "train.lr=5e-2"], results_dir)  # a large lr: the adapter matters
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "lorasweep.export", str(folder), "--merge", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "merged model:" in proc.stderr and (out / "model.safetensors").is_file()
    merged = auto.from_pretrained(out).eval()  # plain transformers: no peft, no lorasweep
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapted, _ = export.load_adapted(folder)
    adapted.eval()
    inputs = batch(tokenizer, TEXTS)
    with torch.no_grad():
        expected, got = adapted(**inputs).logits, merged(**inputs).logits
        with adapted.disable_adapter():
            bare = adapted(**inputs).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (bare - expected).abs().max() > 1e-3  # and the adapter did change the outputs
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_a_merge_never_overwrites_a_folder_of_other_files(results_dir, tmp_path, capsys):
    """--out naming a folder of other files (a base model's, say) is refused before the model loads,
    and the folder is left as it was; an earlier export (its lorasweep_export.json) is replaced."""
    folder = run(TINY_TOPICS, results_dir)
    base = tmp_path / "my-base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "mine"}')
    (base / "model.safetensors").write_bytes(b"weights")
    capsys.readouterr()  # the run's own lines
    assert export.main([str(folder), "--merge", "--out", str(base)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out {base} holds other files (config.json, model.safetensors), which the merged model would "
        f"overwrite: give a new or empty folder, or an earlier export's"]
    assert (base / "config.json").read_text() == '{"model_type": "mine"}' and len(list(base.iterdir())) == 2
    (tmp_path / "a-file").write_text("mine")
    assert export.main([str(folder), "--merge", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file: give a new or empty folder" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "mine"
    first = export.merge(folder)  # RUN_DIR/merged, then over itself
    assert export.merge(folder) == first and (first / "model.safetensors").is_file()


def test_two_adapters_of_one_sweep_on_one_base_switch(results_dir):
    a = run(TINY_TOPICS + ["train.lr=5e-2", "lora.r=4"], results_dir)
    b = run(TINY_TOPICS + ["train.lr=5e-2", "lora.r=8", "train.seed=1"], results_dir)
    both, tokenizer, names = export.load_adapters([a, b])
    assert names == [a.name, b.name] and set(both.peft_config) == set(names)
    inputs = batch(tokenizer, TEXTS)
    both.eval()
    outputs = {}
    with torch.no_grad():
        for name, folder in zip(names, (a, b)):
            both.set_adapter(name)
            alone, _ = export.load_adapted(folder)
            alone.eval()
            outputs[name] = both(**inputs).logits
            # each adapter (and its own copy of the classification head) as its run left it
            torch.testing.assert_close(outputs[name], alone(**inputs).logits, atol=1e-6, rtol=0)
    assert (outputs[names[0]] - outputs[names[1]]).abs().max() > 1e-3


def test_adapters_of_different_bases_are_refused(results_dir):
    a = run(TINY_TOPICS, results_dir)
    b = run(TINY_TOPICS + ["model=tiny-roberta"], results_dir)
    with pytest.raises(export.ExportError, match="adapters share one base"):
        export.load_adapters([a, b])


def test_export_refuses_runs_without_an_adapter_and_a_full_runs_model_reloads_as_recorded(results_dir, capsys):
    """README: `model/` for method=full, loadable with plain transformers; export refuses full and
    none runs with the reason."""
    from lorasweep.run.plan import plan_run
    from lorasweep.model.tiny_tokenizer import build_tiny_tokenizer

    overrides = TINY_TOPICS + ["method=full", "train.lr=5e-2"]  # a large lr: training moves the loss
    full = run(overrides, results_dir)
    result = json.loads((full / "result.json").read_text())
    assert result["artifacts"]["path"] == "model" and (full / "model" / "config.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(full / "model").eval()  # no peft, no lorasweep
    task = plan_run(compose_config(overrides)).task
    tokenizer = build_tiny_tokenizer("bert")  # tiny-bert's tokenizer is built in memory, not saved
    inputs = tokenizer([r["text"] for r in task.test], padding=True, truncation=True,
                       max_length=result["config"]["train"]["max_length"], return_tensors="pt")
    labels = torch.tensor([task.label_ids[str(r["label"])] for r in task.test])
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    test = result["metrics"]["test"]
    assert len(labels) == test["n"] == 16
    assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(test["accuracy"], abs=1e-9)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(test["loss"], rel=1e-5)
    # the trained model, not the base: the same seed's untrained model (method=none) scores another loss
    none = run(TINY_TOPICS + ["method=none"], results_dir)
    assert abs(json.loads((none / "result.json").read_text())["metrics"]["test"]["loss"] - loss) > 1e-2
    assert not (none / "model").exists() and not (none / "adapter").exists()
    # neither run has an adapter to merge: refused with the reason, exit status 2, nothing written
    capsys.readouterr()
    assert export.main([str(none), "--merge"]) == 2
    assert "method 'none' has no adapter to merge (nothing was trained)" in capsys.readouterr().err
    assert export.main([str(full), "--merge"]) == 2
    assert f"method 'full' has no adapter to merge (its whole model is already saved in {full / 'model'})" \
        in capsys.readouterr().err
    assert not (none / "merged").exists() and not (full / "merged").exists()
    with pytest.raises(export.ExportError) as refused:  # the store itself: its runs are named
        export.read_run(results_dir)
    assert str(refused.value) == (f"{results_dir}: a results store of 2 runs, not a run: pass one run's folder, "
                                  f"e.g. {min(full, none)}")
    with pytest.raises(export.ExportError, match="no readable result.json"):
        export.read_run(results_dir / "nothing-here")


def test_label_names_travel_with_every_saved_classifier(results_dir, tmp_path):
    """A pipeline on the merged export answers the task's label names (noun.animal, not LABEL_2); the
    adapter keeps them in labels.json (peft's adapter_config.json has no place for them), as a
    config.json has them; a full run's model/config.json has them too."""
    from transformers import AutoConfig, pipeline

    from lorasweep.run.plan import plan_run

    labels = plan_run(compose_config(TINY_TOPICS)).task.labels
    assert len(labels) == 26 and labels[2] == "noun.animal"
    folder = run(TINY_TOPICS + ["train.lr=5e-2"], results_dir)
    out = export.merge(folder, tmp_path / "merged")
    classify = pipeline("text-classification", model=str(out))
    answers = classify(TEXTS)
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        best = merged(**batch(AutoTokenizer.from_pretrained(out), TEXTS)).logits.argmax(-1).tolist()
    assert [a["label"] for a in answers] == [labels[i] for i in best]
    assert merged.config.id2label == dict(enumerate(labels)) and merged.config.label2id["noun.animal"] == 2
    saved = json.loads((folder / "adapter" / "labels.json").read_text())
    assert saved == {"id2label": {str(i): name for i, name in enumerate(labels)},
                     "label2id": {name: i for i, name in enumerate(labels)}}
    # the README's recipe for an adapter: ids made ints, both maps handed to the classifier's config
    config = AutoConfig.from_pretrained(out, id2label={int(i): n for i, n in saved["id2label"].items()},
                                        label2id=saved["label2id"])
    assert config.num_labels == 26 and config.id2label[2] == "noun.animal"
    adapted, _ = export.load_adapted(folder)
    assert adapted.config.id2label[2] == "noun.animal"
    full = run(TINY_TOPICS + ["method=full"], results_dir)
    assert AutoConfig.from_pretrained(full / "model").id2label[2] == "noun.animal"
