"""Composing configs from the groups, and every bad value refused with field, value and what is valid."""
import pytest

from lorasweep.config.spec import from_config
from lorasweep.errors import ConfigError

from conftest import compose_config


def spec_of(*overrides):
    return from_config(compose_config(list(overrides)))


def test_default_composes_to_the_embedded_default():
    spec = spec_of()
    assert (spec.model.name, spec.model.source, spec.task.name, spec.method) == \
        ("smollm2-4l", "gguf_package", "wordnet_topics", "lora")
    assert (spec.lora.r, spec.lora.alpha, spec.lora.proj) == (8, 16.0, "qkvo")


def test_alpha_follows_r_unless_set():
    assert spec_of("lora.r=4").lora.alpha == 8.0
    assert spec_of("lora.r=32").lora.alpha == 64.0
    assert spec_of("lora.r=32", "lora.alpha=16").lora.alpha == 16.0


def test_groups_compose():
    spec = spec_of("model=smollm2-135m", "method=dora", "lora.r=8", "lora.proj=vq", "lora.dropout=0.1",
                   "train.lr=2e-4", "train.seed=1", "task=wordnet_mcq")
    assert spec.model.family == "llama" and spec.method == "dora" and spec.task.kind == "mcq"
    assert (spec.lora.proj, spec.lora.dropout, spec.train.lr, spec.train.seed) == ("qv", 0.1, 2e-4, 1)
    assert spec.train.max_length == 192  # the task's train tweak applies


def test_method_full_lowers_lr_but_the_command_line_wins():
    assert spec_of("method=full").train.lr == 5e-5
    assert spec_of("method=full", "train.lr=1e-4").train.lr == 1e-4


def test_run_key_is_stable_and_ignores_what_does_not_define_the_run():
    a, b = spec_of("lora.proj=qkvo"), spec_of("lora.proj=vkqo")
    assert a.run_key == b.run_key  # a code is a set
    assert spec_of("lora.r=4").run_key != a.run_key
    assert spec_of("train.seed=1").run_key != a.run_key
    # lora settings do not define a full fine-tuning run
    assert spec_of("method=full", "lora.r=4").run_key == spec_of("method=full", "lora.r=16").run_key
    key_results = from_config({**compose_config([]), "results_dir": "/elsewhere"}).run_key
    assert key_results == a.run_key
    # an MCQ's answer format defines its runs; the default (letter) is left out, as it was before the field
    letter, option = spec_of("task=wordnet_mcq", "task.answer=letter"), spec_of("task=wordnet_mcq")
    assert option.task.answer == "option" and letter.run_key != option.run_key
    assert "answer" not in letter.defining()["task"] and option.defining()["task"]["answer"] == "option"
    # likewise the base's dtype: float32 (the default) is left out; bfloat16 defines other runs
    mcq_bf16 = spec_of("task=wordnet_mcq", "model.dtype=bfloat16")
    assert "dtype" not in option.defining()["model"] and mcq_bf16.model.dtype == "bfloat16"
    assert mcq_bf16.run_key != option.run_key


@pytest.mark.parametrize("override,field,valid", [
    ("lora.r=0", "lora.r=0", "positive integer"),
    ("lora.r=-4", "lora.r=-4", "positive integer"),
    ("lora.dropout=1.0", "lora.dropout=1.0", "[0, 1)"),
    ("lora.dropout=-0.1", "lora.dropout=-0.1", "[0, 1)"),
    ("train.lr=0", "train.lr=0", "positive number"),
    ("train.lr=-1e-4", "train.lr=-0.0001", "positive number"),
    ("lora.alpha=-2", "lora.alpha=-2", "positive number"),
    ("train.batch_size=0", "train.batch_size=0", "positive integer"),
    ("train.seed=-1", "train.seed=-1", "a whole number from 0 to 2**32 - 1"),  # numpy refused it after the load
    ("train.seed=4294967296", "train.seed=4294967296", "a whole number from 0 to 2**32 - 1"),
    ("method.name=adalora", "method='adalora'", "none, lora, dora, full, rslora, pissa, qlora, qlora8"),
    ("lora.proj=qkx", "lora.proj='qkx'", "q k v o g u d"),
    ("lora.proj=''", "lora.proj=''", "empty"),
    ("task=wordnet_mcq task.answer=word", "task.answer='word'", "letter (the reply is 'B. text') or option"),
    ("task=wordnet_mcq model.dtype=float16", "model.dtype='float16'", "choose one of float32, bfloat16"),
    ("task=wordnet_mcq method=full model.dtype=bfloat16", "model.dtype='bfloat16'",
     "float32 for method=full (it trains the base weights)"),
    ("task=wordnet_mcq method=qlora model.dtype=bfloat16", "model.dtype='bfloat16'", "float32 for method=qlora"),
    ("model.dtype=bfloat16", "model.dtype='bfloat16'", "float32 for task wordnet_topics (classification)"),
    ('task=wordnet_mcq tokens.new=["<w>"] model.dtype=bfloat16', "model.dtype='bfloat16'",
     "float32 with tokens.train=true"),
])
def test_bad_values_name_field_value_and_valid(override, field, valid):
    with pytest.raises(ConfigError) as e:
        spec_of(*override.split())
    assert field in str(e.value) and valid in str(e.value)


def test_a_bf16_base_takes_the_methods_that_train_only_float32_adapters():
    for method in ("lora", "dora", "rslora", "pissa"):
        assert spec_of("task=wordnet_mcq", f"method={method}", "model.dtype=bfloat16").model.dtype == "bfloat16"
    # method=none trains nothing: any base evaluates, a classifier's untrained head too
    assert spec_of("method=none", "model.dtype=bfloat16").model.dtype == "bfloat16"


def test_bert_has_no_gate():
    with pytest.raises(ConfigError) as e:
        spec_of("model=minilm", "lora.proj=qkvg")
    assert "'g' (MLP gate)" in str(e.value) and "valid codes for bert: q k v o u d" in str(e.value)
