"""Trainable-parameter counts from configs alone, checked against peft on the same meta-device model."""
import itertools

import pytest
import torch

from lorasweep.config.spec import ModelSpec, from_config
from lorasweep.errors import ConfigError
from lorasweep.model import methods, params, projections
from lorasweep.model.loading import build_on_meta
from lorasweep.run.plan import plan_run

from conftest import TINY_TOPICS, compose_config

ARCHS = [  # (family, head, projection sets)
    ("qwen3", "causal_lm", ["qk", "qkvo", "gud", "qkvogud"]),
    ("llama", "classification", ["v", "qkvogud"]),
    ("bert", "classification", ["v", "qkvo", "qkvoud"]),
    ("roberta", "classification", ["v", "qv", "ud"]),
    ("gpt2", "causal_lm", ["qkv", "o", "qkvoud"]),
    ("gpt2", "classification", ["qkvo"]),
    ("t5", "seq2seq_lm", ["qv", "qkvoud"]),
]
CASES = [(f, h, m, c, r) for f, h, codes in ARCHS for m in ("lora", "dora")
         for c, r in itertools.product(codes, (1, 4, 22))]


def peft_count(family, head, method, code, r, num_labels=4):
    skeleton = build_on_meta(ModelSpec(name=f"tiny-{family}", family=family, source="tiny"), head, num_labels)
    targets = projections.resolve_modules(skeleton, family, code, skeleton.config)
    predicted = params.predict_trainable(skeleton, method, targets, r, head)
    spec = from_config(compose_config([f"model=tiny-{family}", f"method={method}", f"lora.r={r}"]))
    with torch.device("meta"):
        wrapped = methods.prepare(skeleton, spec, head, targets)
    return predicted, methods.count_parameters(wrapped)[0]


@pytest.mark.parametrize("family,head,method,code,r", CASES)
def test_prediction_equals_peft(family, head, method, code, r):
    predicted, actual = peft_count(family, head, method, code, r)
    assert predicted == actual


@pytest.mark.parametrize("method", ["full", "none"])
@pytest.mark.parametrize("family,head", [("qwen3", "causal_lm"), ("bert", "classification"),
                                         ("gpt2", "causal_lm"), ("t5", "seq2seq_lm")])
def test_full_and_none(family, head, method):
    skeleton = build_on_meta(ModelSpec(name=f"tiny-{family}", family=family, source="tiny"), head, 4)
    unique = {id(p): p.numel() for p in skeleton.parameters()}  # a tied weight counts once
    expected = sum(unique.values()) if method == "full" else 0
    assert params.predict_trainable(skeleton, method, [], 8, head) == expected


def hub(name, family):
    return ModelSpec(name=name, family=family, source="hub", id="unreachable/x", config=f"configs/{name}.json")


def test_roberta_base_value_only_under_1m_picks_r22_like_the_tutorial():
    skeleton = build_on_meta(hub("roberta-base", "roberta"), "classification", 4)
    targets = projections.resolve_modules(skeleton, "roberta", "v", skeleton.config)
    r = params.largest_rank_within(skeleton, "lora", targets, "classification", 1_000_000)
    assert (r, params.predict_trainable(skeleton, "lora", targets, r, "classification")) == (22, 999_172)
    assert params.predict_trainable(skeleton, "lora", targets, r + 1, "classification") > 1_000_000


def test_qwen3_1_7b_dora_all_projections_matches_peft_offline():
    skeleton = build_on_meta(hub("qwen3-1.7b", "qwen3"), "causal_lm")
    assert sum(p.numel() for p in skeleton.parameters()) == 1_720_574_976  # Qwen3-1.7B, tied embeddings
    targets = projections.resolve_modules(skeleton, "qwen3", "qkvogud", skeleton.config)
    predicted = params.predict_trainable(skeleton, "dora", targets, 16, "causal_lm")
    spec = from_config(compose_config(["method=dora", "lora.r=16", "model=qwen3-1.7b", "task=wordnet_mcq"]))
    with torch.device("meta"):
        actual = methods.count_parameters(methods.prepare(skeleton, spec, "causal_lm", targets))[0]
    assert predicted == actual == 18_006_016


def four_label_task(tmp_path):
    rows = "\n".join(f'{{"text": "gloss {i}", "label": "c{i % 4}"}}' for i in range(8))
    (tmp_path / "d.jsonl").write_text(rows + "\n")
    return [f"task.{k}={tmp_path / 'd.jsonl'}" for k in ("train", "eval", "test")] + ["task.labels=''"]


def test_r_auto_through_the_config(tmp_path):
    plan = plan_run(compose_config(["model=roberta-base", "lora.proj=v", "lora.r=auto", "budget=1m",
                                    *four_label_task(tmp_path)]))
    assert (plan.spec.lora.r, plan.spec.lora.alpha, plan.predicted, plan.auto_rank) == (22, 44.0, 999_172, True)
    same = plan_run(compose_config(["model=roberta-base", "lora.proj=v", "lora.r=22", "budget=1m",
                                    *four_label_task(tmp_path)]))
    assert same.spec.run_key == plan.spec.run_key  # auto resolves to the same run as r=22


@pytest.mark.parametrize("written", ["1000000", "1_000_000", "1e6", "1M", "1m", "1000k", "0.001B"])
def test_a_budget_is_taken_as_researchers_write_it(written):
    plan = plan_run(compose_config(TINY_TOPICS + [f"budget.max_trainable={written}"]))
    assert plan.budget == 1_000_000
    assert plan_run(compose_config(TINY_TOPICS + ["budget.max_trainable=1.5M"])).budget == 1_500_000


@pytest.mark.parametrize("overrides,message", [
    (["lora.r=auto"], "lora.r='auto' needs a budget"),
    (["lora.r=auto", "budget.max_trainable=1000"], "budget.max_trainable=1,000 is below the smallest possible"),
    (["budget.max_trainable=-5"], "budget.max_trainable=-5 is invalid"),
    (["budget.max_trainable=0"], "budget.max_trainable=0 is invalid"),
    (["budget.max_trainable=1.5"], r"budget.max_trainable=1.5 is invalid: a positive number of trainable parameters "
                                   r"\(e.g. 1000000 or 1M\), or null for no budget"),
    (["budget.max_trainable=1X"], "budget.max_trainable='1X' is invalid"),
    (["budget.max_trainable=0.1234k"], "budget.max_trainable='0.1234k' is invalid"),
])
def test_bad_budgets(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_run(compose_config(TINY_TOPICS + overrides))


@pytest.mark.parametrize("method", ["rslora", "pissa"])
@pytest.mark.parametrize("family,head,code", [("qwen3", "causal_lm", "qkvogud"), ("bert", "classification", "qkvoud"),
                                              ("gpt2", "causal_lm", "qkvo"), ("llama", "classification", "v")])
def test_rslora_and_pissa_counts_equal_peft_on_real_weights(family, head, code, method):
    """Same arithmetic as lora; PiSSA's SVD needs real weights, so the tiny model is built for real."""
    spec = from_config(compose_config([f"model=tiny-{family}", f"method={method}", "lora.r=4", f"lora.proj={code}"]))
    skeleton = build_on_meta(spec.model, head, 4)
    targets = projections.resolve_modules(skeleton, family, code, skeleton.config)
    predicted = params.predict_trainable(skeleton, method, targets, 4, head)
    from lorasweep.model.loading import load_model
    model, _ = load_model(spec.model, head, 4)
    assert predicted == methods.count_parameters(methods.prepare(model, spec, head, targets))[0]
    assert predicted == params.predict_trainable(skeleton, "lora", targets, 4, head)
