"""Token injection: new ids planned from the tokenizer alone, counted exactly, initialised as asked,
trained when asked, and saved so the adapter reloads (and merges) onto the same rows."""
import json

import pytest
import torch

from lorasweep import export
from lorasweep.errors import ConfigError
from lorasweep.model import loading, methods, tokens
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.tasks.task import evaluator, load_task

from conftest import TINY_MCQ, TINY_TOPICS, compose_config

NEW = '["<widget>","<signal>","<orange>"]'


def built_count(cfg):
    """(planned, peft's count) for a config: the model loaded, tokens injected, the method applied."""
    plan = plan_run(cfg)
    spec = plan.spec
    model, tok = loading.load_model(spec.model, plan.head, plan.task.num_labels)
    ids = tokens.inject(model, tok, spec.tokens.new, spec.tokens.init, spec.train.seed)
    assert ids == plan.token_ids
    prepared = methods.prepare(model, spec, plan.head, list(plan.targets), ids)
    return plan, methods.count_parameters(prepared)[0]


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "full", "none"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("base,vocab", [(TINY_TOPICS, 128), (TINY_MCQ, 128), (TINY_MCQ, 105), (TINY_TOPICS, 105)],
                         ids=["bert-spare-rows", "qwen3-spare-rows", "qwen3-resized", "bert-resized"])
def test_token_rows_are_counted_exactly(base, vocab, method, train):
    cfg = compose_config(base + [f"method={method}", f"tokens.new={NEW}", f"tokens.train={str(train).lower()}",
                                 f"+model.tiny.vocab_size={vocab}"])
    plan, actual = built_count(cfg)
    assert plan.token_ids == (105, 106, 107)  # the tiny tokenizer has 105 tokens
    assert plan.predicted == actual
    without, _ = built_count(compose_config(base + [f"method={method}", f"+model.tiny.vocab_size={vocab}"]))
    rows = 3 * 64  # three rows of the 64-wide embedding
    if method == "full":  # every weight: the embedding grew by 3 rows only when it had no spare ones
        assert plan.predicted - without.predicted == (rows if vocab == 105 else 0)
    elif method == "none":
        assert plan.predicted == 0
    else:
        assert plan.predicted - without.predicted == (rows if train else 0)


@pytest.mark.parametrize("init", ["zero", "average", "random"])
def test_init_and_one_token_per_new_word(init):
    from lorasweep.config.spec import from_config
    model_spec = from_config(compose_config(TINY_MCQ + ["+model.tiny.vocab_size=105"])).model
    model, tok = loading.load_model(model_spec, "causal_lm")
    before = model.get_input_embeddings().weight[:105].clone()
    ids = tokens.inject(model, tok, ("<widget>", "<signal>", "a"), init, seed=3)  # "a" is already a token
    assert ids == (105, 106) and tok("<widget> a<signal>")["input_ids"] == [105, tok.convert_tokens_to_ids(" "), tok.convert_tokens_to_ids("a"), 106]
    w = model.get_input_embeddings().weight
    assert w.shape[0] == 107 and torch.equal(w[:105], before)
    assert model.get_output_embeddings().weight is w  # still tied after the resize
    if init == "zero":
        assert torch.count_nonzero(w[105:]) == 0
    elif init == "average":
        assert torch.allclose(w[105], before.mean(0)) and torch.equal(w[105], w[106])
    else:  # seeded: the same rows every time (a saved adapter reloads onto them)
        again, tok2 = loading.load_model(model_spec, "causal_lm")
        tokens.inject(again, tok2, ("<widget>", "<signal>"), "random", seed=3)
        assert torch.equal(again.get_input_embeddings().weight[105:], w[105:])
        assert 0.005 < w[105:].std().item() < 0.05  # initializer_range 0.02


def test_bad_token_settings_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"tokens.init='mean' is invalid: choose one of random, average, zero"):
        plan_run(compose_config(TINY_MCQ + [f"tokens.new={NEW}", "tokens.init=mean"]))
    with pytest.raises(ConfigError, match=r"tokens.new=.* is invalid: each token once"):
        plan_run(compose_config(TINY_MCQ + ['tokens.new=["<a>","<a>"]']))
    with pytest.raises(ConfigError, match=r"tokens.new='missing.json' is invalid: a list of tokens or a JSON file"):
        plan_run(compose_config(TINY_MCQ + ["tokens.new=missing.json"]))


@pytest.mark.parametrize("vocab", [128, 105], ids=["spare-rows", "resized"])
def test_trained_tokens_save_reload_and_merge(vocab, tmp_path, results_dir):
    token_file = tmp_path / "injected_tokens.json"
    token_file.write_text(json.dumps(["<widget>", "<signal>"]))  # the Qwen3 tutorial's file form
    cfg = compose_config(TINY_MCQ + [f"tokens.new={token_file}", "tokens.init=average", "train.lr=5e-2",
                                     f"+model.tiny.vocab_size={vocab}", f"results_dir={results_dir}"])
    result = run_config(cfg)
    assert result["config"]["tokens"] == {"new": ["<widget>", "<signal>"], "init": "average", "train": True}
    assert result["slug"].endswith("-tok2") and result["params"]["predicted"] == result["params"]["trainable"]
    folder = results_dir / f"{result['slug']}-{result['run_key']}"
    assert json.loads((folder / "adapter" / "tokenizer_config.json").read_text())  # the ids travel with it
    from safetensors.torch import load_file
    saved = load_file(folder / "adapter" / "adapter_model.safetensors")
    [delta] = [v for k, v in saved.items() if "trainable_tokens_delta" in k]
    # trained: the tied output layer gives the new rows a gradient through the softmax even
    # though the data never uses them; and only 2 rows are saved, not the embedding
    assert delta.shape == (2, 64) and delta.abs().max() > 0
    assert not any("embed_tokens.weight" in k for k in saved)
    adapted, tok = export.load_adapted(folder)
    run = export.read_run(folder)
    task = load_task(run.task)
    plan = plan_run(cfg)
    again = evaluator(task, tok, task.test, plan.spec.train, plan.head)(adapted)
    assert again["accuracy"] == result["metrics"]["test"]["accuracy"]
    assert again["loss"] == pytest.approx(result["metrics"]["test"]["loss"], abs=1e-5)
    ids = tok.convert_tokens_to_ids(["<widget>", "<signal>"])
    inputs = tok(["<widget> is a <signal>"], return_tensors="pt")
    merged_dir = export.merge(folder, tmp_path / "merged")
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-5, rtol=0)
    assert ids == [105, 106]
