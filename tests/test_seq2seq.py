"""Completion on an encoder-decoder trains as seq2seq: which head each task gets on which model (and
what is refused), a real tiny T5 run through launch.py, counts against peft, and the seq2seq metrics
checked against the model's own loss and generation."""
import json

import pytest
import torch

from lorasweep.config.spec import ModelSpec
from lorasweep.errors import ConfigError
from lorasweep.model import loading, methods
from lorasweep.run.plan import plan_run
from lorasweep.sweep.packs import why_alone
from lorasweep.tasks import seq2seq

from conftest import compose_config, launch
from test_own_data import CHAT, own

T5_NL2BASH = ["model=tiny-t5", "task=nl2bash", "train.max_steps=2", "train.eval_steps=2", "task.max_train=16",
              "task.max_eval=4", "task.max_test=6", "train.batch_size=4", "train.eval_batch_size=8"]
METRICS = {"loss", "loss_se", "token_accuracy", "token_accuracy_se", "exact_match", "exact_match_se", "n", "n_tokens"}


def bart_folder(folder):
    """config.json of a tiny BART: in transformers' seq2seq and causal-LM mappings both, but its causal
    LM is its decoder alone (bart is a masked-LM model type too): an encoder-decoder."""
    from transformers import AutoConfig

    AutoConfig.for_model("bart", vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=64).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("overrides,head", [
    (["model=tiny-t5", "task=nl2bash"], "seq2seq_lm"),
    (["model=tiny-t5", "task=wordnet_topics"], "classification"),
    (["model=tiny-llama", "task=nl2bash"], "causal_lm"),
    (["model=tiny-gpt2", "task=nl2bash"], "causal_lm"),
    (["model=hf", "model.id={bart}", "lora.proj=all", "task=nl2bash"], "seq2seq_lm"),
])
def test_the_head_each_task_trains_on_each_model(tmp_path, overrides, head):
    cfg = compose_config([o.format(bart=bart_folder(tmp_path / "bart")) if "{bart}" in o else o for o in overrides])
    assert plan_run(cfg).head == head


@pytest.mark.parametrize("overrides,message", [
    (["model=tiny-t5", "task=wordnet_mcq"],
     "task wordnet_mcq (mcq) trains a causal LM; model=tiny-t5 is a t5 model, an encoder-decoder with no causal-LM "
     "head in transformers: on it only completion tasks train (as seq2seq); for mcq choose a decoder, e.g. "
     "model=smollm2-135m"),
    (["model=tiny-bert", "task=nl2bash"],
     "task nl2bash (completion) trains a causal LM; model=tiny-bert is a bert model, which has no causal-LM head in "
     "transformers: choose a decoder, e.g. model=smollm2-135m (or llama, qwen3, gpt2, phi3 ... with model=hf), or an "
     "encoder-decoder such as t5 (trained as seq2seq)"),
])
def test_what_an_encoder_decoder_or_an_encoder_cannot_train_is_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as e:  # launch.py prints it as one line, "error: ...", exit 2 (tests/test_cli.py)
        plan_run(compose_config(overrides))
    assert str(e.value) == message


def test_chat_on_t5_is_refused_at_plan_time(tmp_path):
    with pytest.raises(ConfigError, match=r"task jsonl \(chat\) trains a causal LM; model=tiny-t5 is a t5 model, an "
                                          r"encoder-decoder .* for chat choose a decoder"):
        plan_run(compose_config(own(tmp_path, "chat", CHAT, "tiny-t5")))


def test_nl2bash_on_tiny_t5_trains_as_seq2seq_and_its_adapter_reloads(tmp_path):
    from lorasweep import export
    from lorasweep.tasks.task import evaluator

    proc = launch(T5_NL2BASH, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = list((tmp_path / "results").glob("*/result.json"))
    result = json.loads(path.read_text())
    assert result["status"] == "done"
    test = result["metrics"]["test"]
    assert set(test) == METRICS and test["n"] == 6 and test["n_tokens"] > 6
    assert test["loss"] > 0 and 0 <= test["token_accuracy"] <= 1 and 0 <= test["exact_match"] <= 1
    assert test["token_accuracy_se"] == pytest.approx(
        (test["token_accuracy"] * (1 - test["token_accuracy"]) / test["n_tokens"]) ** 0.5)
    assert result["objective"] == {"name": "test.token_accuracy", "value": test["token_accuracy"],
                                   "direction": "maximize"}
    assert [c["step"] for c in result["curve"]] == [0, 2] and result["curve"][-1]["n"] == 4
    # qkvo at r=8 on hidden 64 (4 heads x d_kv 16): 8 x (64 + 64) per module, in 2 encoder layers
    # (self-attention) and 2 decoder layers (self and cross attention): 24 modules, 24,576
    p = result["params"]
    assert p["trainable"] == p["predicted"] == 24 * 8 * (64 + 64) and p["n_adapted_modules"] == 24
    assert any("EncDecAttention.q" in m for m in p["adapted_modules"])
    folder = path.parent
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    # the adapter on a fresh base (the seq2seq head): the run's test metrics again
    model, tok = export.load_adapted(folder)
    plan = plan_run(compose_config(T5_NL2BASH))
    again = evaluator(plan.task, tok, plan.task.test, plan.spec.train, plan.head)(model)
    assert again["exact_match"] == test["exact_match"] and again["token_accuracy"] == test["token_accuracy"]
    assert again["loss"] == pytest.approx(test["loss"], abs=1e-5)


@pytest.mark.parametrize("method,proj", [("lora", "qkvoud"), ("dora", "qv"), ("rslora", "ud"), ("full", "qkvo")])
def test_the_planned_count_equals_peft_on_the_built_t5(method, proj):
    plan = plan_run(compose_config(["model=tiny-t5", "task=nl2bash", f"method={method}", f"lora.proj={proj}"]))
    model, _ = loading.load_model(plan.spec.model, plan.head)
    built = methods.prepare(model, plan.spec, plan.head, list(plan.targets))
    assert methods.count_parameters(built)[0] == plan.predicted > 0
    if method != "full":
        assert sorted(methods.adapted_modules(built)) == sorted(plan.targets)


def test_seq2seq_metrics_are_the_models_own_loss_and_greedy_output():
    """Batched, padded scoring equals each row alone: the loss is T5's own (mean over the label tokens),
    and exact match is 1 when the references are the model's own greedy output."""
    model, tok = loading.load_model(ModelSpec(name="tiny-t5", family="t5", source="tiny"), "seq2seq_lm")
    model.eval()
    rows, losses = [], []
    for prompt in ["ls", "find all python files here", "count lines"]:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        row = {"prompt": prompt, "completion": tok.decode(out[0], skip_special_tokens=True)}
        labels = torch.tensor([seq2seq.encode(tok, row, 64)[1]])
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
        rows.append(row)
    metrics = seq2seq.evaluate(model, tok, rows, batch_size=3, max_length=64, max_new_tokens=6)
    assert metrics["exact_match"] == 1.0 and metrics["n"] == 3
    assert metrics["loss"] == pytest.approx(sum(losses) / 3, abs=1e-5)


def test_seq2seq_runs_train_alone_in_a_packed_sweep():
    assert "trains completion as seq2seq" in why_alone(compose_config(["model=tiny-t5", "task=nl2bash"]))
    assert why_alone(compose_config(["model=tiny-llama", "task=nl2bash"])) is None
