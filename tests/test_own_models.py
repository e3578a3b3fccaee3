"""Your own model (model=hf model.id=FOLDER or hub id): every common decoder and encoder family of
transformers, its projection letters resolved on a meta skeleton built from config.json alone, and
the predicted trainable count equal to what peft builds (lora, dora; lora.proj=all equal to peft's
all-linear; MoE experts, adapted as parameters, with lora and rslora). Folders are made here from
tiny configs (tests/model_zoo.py): no hub."""
import re

import pytest
import torch

from lorasweep.config.projection_codes import ALL, FAMILIES, family_letters, parameter_letters
from lorasweep.config.spec import LoraSpec, ModelSpec, RunSpec, TaskSpec, TrainSpec
from lorasweep.errors import ConfigError
from lorasweep.model import methods, params, projections
from lorasweep.model.loading import build_on_meta

import model_zoo as zoo

LAYER0 = re.compile(r"\.0\.")


def head_of(family):
    return "seq2seq_lm" if family == "t5" else "causal_lm" if family in zoo.DECODERS else "classification"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> a folder holding its config.json (all a plan reads)."""
    root = tmp_path_factory.mktemp("configs")
    out = {f: zoo.config_folder(root / f, f) for f in zoo.CONFIGS}
    out["t5-gated"] = zoo.config_folder(root / "t5-gated", "t5", feed_forward_proj="gated-gelu")
    out["qwen3_moe-dense0"] = zoo.config_folder(root / "qwen3_moe-dense0", "qwen3_moe", mlp_only_layers=[0])
    return out


VARIANTS = {"t5-gated": "t5", "qwen3_moe-dense0": "qwen3_moe"}  # folder -> its family


def skeleton(folders, family, head=None):
    spec = ModelSpec(name=family, family=VARIANTS.get(family, family), source="hf", id=str(folders[family]))
    return spec, build_on_meta(spec, head or head_of(spec.family), 3)


def run_spec(model, method, code, r=4):
    task = TaskSpec(name="t", kind="classification", train="x", eval="x", test="x")
    return RunSpec(model=model, method=method, lora=LoraSpec(r=r, alpha=2.0 * r, dropout=0.0, proj=code),
                   task=task, train=TrainSpec())


def peft_targets(model):
    return sorted(methods.adapted_modules(model))


# (family, code, the modules adapted in layer 0 — every tiny model has 2 layers, T5 2 + 2 blocks)
TABLE = [
    ("mistral", "qkvogud", [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                            "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]),
    ("gemma2", "gu", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]),
    ("mixtral", "qv", ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]),
    # MoE experts: 3-D parameters of mlp.experts, g and u fused in gate_up_proj
    ("mixtral", "gud", ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"]),
    ("qwen2_moe", "qgu", ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.experts.gate_up_proj"]),
    ("qwen3_moe", "d", ["model.layers.0.mlp.experts.down_proj"]),
    ("qwen3_moe", "qkvo", [f"model.layers.0.self_attn.{c}_proj" for c in "qkvo"]),
    ("gemma3", "qd", ["model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.0.mlp.down_proj"]),
    ("phi", "od", ["model.layers.0.self_attn.dense", "model.layers.0.mlp.fc2"]),
    ("phi3", "qkv", ["model.layers.0.self_attn.qkv_proj"]),
    ("phi3", "qkvogu", ["model.layers.0.self_attn.o_proj", "model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj"]),
    ("gpt_neox", "qkvo", ["gpt_neox.layers.0.attention.query_key_value", "gpt_neox.layers.0.attention.dense"]),
    ("falcon", "qkvud", ["transformer.h.0.self_attention.query_key_value", "transformer.h.0.mlp.dense_h_to_4h",
                         "transformer.h.0.mlp.dense_4h_to_h"]),
    ("deberta-v2", "qv", ["deberta.encoder.layer.0.attention.self.query_proj", "deberta.encoder.layer.0.attention.self.value_proj"]),
    ("distilbert", "qkvoud", [f"distilbert.transformer.layer.0.{p}" for p in ("attention.q_lin", "attention.k_lin",
                              "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2")]),
    ("electra", "od", ["electra.encoder.layer.0.attention.output.dense", "electra.encoder.layer.0.output.dense"]),
    ("modernbert", "qkvgu", ["model.layers.0.attn.Wqkv", "model.layers.0.mlp.Wi"]),
    ("modernbert", "od", ["model.layers.0.attn.Wo", "model.layers.0.mlp.Wo"]),
    ("t5-gated", "gu", ["encoder.block.0.layer.1.DenseReluDense.wi_0", "encoder.block.0.layer.1.DenseReluDense.wi_1",
                        "decoder.block.0.layer.2.DenseReluDense.wi_0", "decoder.block.0.layer.2.DenseReluDense.wi_1"]),
]


@pytest.mark.parametrize("family,code,layer0", TABLE)
def test_resolution_table(folders, family, code, layer0):
    spec, model = skeleton(folders, family)
    names = projections.resolve_modules(model, spec.family, code, model.config)
    assert [n for n in names if LAYER0.search(n) and "layer.1." not in n.split(".0.")[-1]] == layer0 or \
        [n for n in names if re.search(r"\.(layers|layer|h|block)\.0\.", n)] == layer0
    assert len(names) == projections.expected_module_count(spec.family, code, model.config) == 2 * len(layer0)


def _codes(family):
    letters = "qkvoud" if family == "t5" else family_letters(VARIANTS.get(family, family))
    return sorted({letters, letters[:2] if letters[:3] != "qkv" or family in ("mixtral", "qwen2_moe", "qwen3_moe")
                   else "qkv", ALL})


def _methods(family, code):
    """peft adapts MoE experts (parameters) with lora and rslora only; dora and pissa are refused."""
    return ("lora", "rslora") if parameter_letters(VARIANTS.get(family, family), code) else ("lora", "dora")


COUNT_CASES = [(f, c, m) for f in [*zoo.CONFIGS, *VARIANTS] for c in _codes(f) for m in _methods(f, c)
               if (f, c) != ("qwen3_moe-dense0", ALL)]  # refused: test_a_dense_mlp_peft_would_move_is_refused


@pytest.mark.parametrize("family,code,method", COUNT_CASES)
def test_prediction_equals_peft_for_every_family(folders, family, code, method):
    spec, model = skeleton(folders, family)
    head = head_of(spec.family)
    targets = projections.resolve_modules(model, spec.family, code, model.config, head=head)
    predicted = params.predict_trainable(model, method, targets, 4, head)
    with torch.device("meta"):
        wrapped = methods.prepare(model, run_spec(spec, method, code), head, targets)
    assert predicted == methods.count_parameters(wrapped)[0]
    assert peft_targets(wrapped) == sorted(targets)


# MoE decoders: peft 0.21's all-linear also adapts the fused 3-D experts (mlp.experts.gate_up_proj,
# down_proj) and the router's weight (mlp.gate.weight), through its target_parameters (their
# transformers-4 names mapped onto the fused weights); lorasweep's all is the linear layers, without
# them (the experts are g u d; the router is never adapted).
EXPERTS = {"mixtral", "qwen2_moe", "qwen3_moe"}
# peft's all-linear on a classification model: distilbert's pre_classifier is both an all-linear target
# and, by its name's end, a modules_to_save head, which peft 0.21 cannot wrap twice (TypeError).
PEFT_ALL_LINEAR_FAILS = {("distilbert", "classification")}


@pytest.mark.parametrize("family", [*zoo.CONFIGS])
def test_all_is_peft_all_linear(folders, family):
    spec, model = skeleton(folders, family)
    head = head_of(family)
    ours = projections.resolve_modules(model, family, ALL, model.config, head=head)
    if (family, head) in PEFT_ALL_LINEAR_FAILS:
        assert "pre_classifier" not in ours and "classifier" not in ours
        return
    from peft import LoraConfig, get_peft_model

    task_type = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM"}[head]
    with torch.device("meta"):
        wrapped = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type=task_type))
    theirs = peft_targets(wrapped)
    if family in EXPERTS:
        theirs = [n for n in theirs if ".mlp.experts." not in n and not n.endswith(".mlp.gate.weight")]
    assert theirs == sorted(ours)


@pytest.mark.parametrize("family", ["llama", "phi3", "bert", "deberta-v2", "distilbert", "electra", "modernbert"])
def test_classification_heads_count_as_peft_trains_them(folders, family):
    """Heads differ: distilbert's pre_classifier + classifier, electra's classifier.dense/out_proj,
    deberta's pooler (not trained), modernbert's head.dense (not trained), llama's score."""
    spec, model = skeleton(folders, family, "classification")
    code = "qkv" if family in ("phi3", "modernbert") else "qv"
    targets = projections.resolve_modules(model, family, code, model.config)
    predicted = params.predict_trainable(model, "lora", targets, 2, "classification")
    with torch.device("meta"):
        wrapped = methods.prepare(model, run_spec(spec, "lora", code, 2), "classification", targets)
    assert predicted == methods.count_parameters(wrapped)[0]


def test_every_listed_family_has_a_map():
    assert set(zoo.CONFIGS) <= set(FAMILIES)


def test_a_letter_the_model_cannot_map_names_its_linear_modules(folders):
    spec, model = skeleton(folders, "phi")
    with pytest.raises(ConfigError) as e:
        projections.resolve_modules(model, "phi", "qg", model.config)
    msg = str(e.value)
    assert "\n" not in msg and "the phi model has no map for 'g' (MLP gate)" in msg
    assert "self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.dense, mlp.fc1, mlp.fc2" in msg
    assert "+model.projections.g=" in msg and "lora.proj=all" in msg


def test_moe_gate_and_up_are_one_fused_parameter(folders):
    spec, model = skeleton(folders, "mixtral")
    with pytest.raises(ConfigError, match=r"^lora.proj='qg' is invalid for the mixtral family: it fuses g/u into one "
                                          r"parameter \(mlp.experts.gate_up_proj\), so adapt all of 'gu' or none$"):
        projections.resolve_modules(model, "mixtral", "qg", model.config)


def test_moe_experts_are_counted_per_expert(folders):
    """peft's ParamWrapper: one rank-r pair per expert of each 3-D parameter (experts, a, b)."""
    spec, model = skeleton(folders, "qwen3_moe")  # 4 experts, hidden 32, moe_intermediate 16, 2 layers
    targets = projections.resolve_modules(model, "qwen3_moe", "gud", model.config)
    assert params.predict_trainable(model, "lora", targets, 4, "causal_lm") == 2 * 4 * 4 * ((32 + 32) + (16 + 32))


def test_an_unknown_model_type_runs_with_all_and_with_its_own_map(folders):
    spec, model = skeleton(folders, "llama")
    assert len(projections.resolve_modules(model, "my_arch", ALL, model.config, head="causal_lm")) == 14
    with pytest.raises(ConfigError, match=r"the my_arch model has no map for 'q'.*self_attn\.q_proj"):
        projections.resolve_modules(model, "my_arch", "q", model.config)
    own = {"q": r"self_attn\.q_proj", "v": r"self_attn\.v_proj"}
    names = projections.resolve_modules(model, "my_arch", "qv", model.config, projections=own)
    assert names == [f"model.layers.{i}.self_attn.{c}_proj" for i in (0, 1) for c in "qv"]


def test_an_own_pattern_matching_too_much_is_an_error(folders):
    spec, model = skeleton(folders, "llama")
    with pytest.raises(ConfigError, match="matched 4 modules of this llama model, expected 2"):
        projections.resolve_modules(model, "llama", "q", model.config, projections={"q": r"self_attn\.[qk]_proj"})


# --- through the config: model=hf model.id=... -------------------------------------------------------

from lorasweep.config import hf_model  # noqa: E402
from lorasweep.run.plan import plan_run  # noqa: E402
from lorasweep.run.preflight import preflight  # noqa: E402

from conftest import compose_config  # noqa: E402

MCQ = ["task=wordnet_mcq", "task.max_train=8", "task.max_eval=4", "task.max_test=4"]
TOPICS = ["task=wordnet_topics", "task.max_train=8", "task.max_eval=4", "task.max_test=4"]


def test_family_and_name_come_from_the_folder(tmp_path):
    folder = zoo.config_folder(tmp_path / "My Qwen3_ckpt", "qwen3")
    plan = plan_run(compose_config(["model=hf", f"model.id={folder}", "lora.proj=qkvogud", *MCQ]))
    assert (plan.spec.model.family, plan.spec.model.name, plan.spec.model.source) == ("qwen3", "my-qwen3_ckpt", "hf")
    assert len(plan.targets) == 14 and plan.spec.slug.startswith("my-qwen3_ckpt-wordnet_mcq-lora-qkvogud-r8")
    assert "projections" not in plan.spec.defining()["model"]  # left out at its default: YAML models' keys stay
    named = plan_run(compose_config(["model=hf", f"model.id={folder}", "model.name=mine", "lora.proj=qkvogud", *MCQ]))
    assert named.spec.model.name == "mine" and named.predicted == plan.predicted


def test_slugs_of_hub_ids_and_folders():
    assert hf_model.slug("google/gemma-3-270m") == "gemma-3-270m"
    assert hf_model.slug("/data/ckpt/my-llama/") == "my-llama"
    assert hf_model.slug("Qwen/Qwen3-0.6B") == "qwen3-0.6b"


def test_model_family_forces_a_map(tmp_path):
    folder = zoo.config_folder(tmp_path / "m", "llama")
    plan = plan_run(compose_config(["model=hf", f"model.id={folder}", "model.family=mistral", "lora.proj=qv", *MCQ]))
    assert plan.spec.model.family == "mistral" and len(plan.targets) == 4


def test_own_projection_patterns_through_the_config(tmp_path):
    folder = zoo.config_folder(tmp_path / "moe", "qwen2_moe")
    base = ["model=hf", f"model.id={folder}", *MCQ]
    with pytest.raises(ConfigError, match=r"fuses g/u into one parameter \(mlp\.experts\.gate_up_proj\)"):
        plan_run(compose_config([*base, "lora.proj=qg"]))  # g: the routed experts; the shared expert by name
    plan = plan_run(compose_config([*base, "lora.proj=qg", "+model.projections.g=mlp.shared_expert.gate_proj"]))
    assert [t for t in plan.targets if "gate" in t] == [f"model.layers.{i}.mlp.shared_expert.gate_proj" for i in (0, 1)]
    assert plan.spec.defining()["model"]["projections"] == {"g": "mlp.shared_expert.gate_proj"}  # in the run key


def test_own_projections_on_a_yaml_model_and_its_run_key():
    cfg = ["model=tiny-llama", *MCQ, "lora.proj=q"]
    plain = plan_run(compose_config(cfg))
    same = plan_run(compose_config([*cfg, r"+model.projections.q=self_attn\.q_proj"]))
    assert same.targets == plain.targets and same.spec.run_key != plain.spec.run_key


@pytest.mark.parametrize("overrides,message", [
    (["lora.proj=all", *MCQ], None),
    (["lora.proj=qv", *TOPICS], "needs a classification head; model=m is a granite model, which has none"),
])
def test_heads_a_model_type_lacks_are_refused_at_plan_time(tmp_path, overrides, message):
    folder = zoo.config_folder(tmp_path / "m", "granite")
    cfg = compose_config(["model=hf", f"model.id={folder}", *overrides])
    if message is None:
        assert plan_run(cfg).spec.lora.proj == "all"
        return
    with pytest.raises(ConfigError, match=message):
        plan_run(cfg)


def test_a_causal_lm_task_on_an_encoder_is_refused(tmp_path):
    folder = zoo.config_folder(tmp_path / "enc", "electra")
    with pytest.raises(ConfigError, match="trains a causal LM; model=enc is a electra model, which has no causal-LM head"):
        plan_run(compose_config(["model=hf", f"model.id={folder}", *MCQ]))


def test_a_missing_folder_is_refused_before_torch(tmp_path):
    cfg = compose_config(["model=hf", f"model.id={tmp_path / 'nope'}", f"results_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="model.id=.*no such folder"):
        preflight(cfg)


def test_a_hub_id_counts_from_its_cached_config_json_alone(tmp_path, monkeypatch):
    """Only config.json in the HF cache (no weights): the plan counts offline."""
    repo = tmp_path / "hub" / "models--someone--tiny-phi3"
    snapshot = repo / "snapshots" / ("0" * 40)
    zoo.config_folder(snapshot, "phi3")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    plan = plan_run(compose_config(["model=hf", "model.id=someone/tiny-phi3", "lora.proj=qkvogud", *MCQ]))
    assert (plan.spec.model.name, plan.spec.model.family, len(plan.targets)) == ("tiny-phi3", "phi3", 8)


EXPERTS_RUN = ["lora.proj=qkvogud", "lora.dropout=0", *MCQ]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_a_plan_counts_the_experts_as_peft_does(tmp_path, family):
    folder = zoo.config_folder(tmp_path / family, family)
    plan = plan_run(compose_config(["model=hf", f"model.id={folder}", *EXPERTS_RUN]))
    assert [t for t in plan.targets if ".0.mlp" in t] == ["model.layers.0.mlp.experts.gate_up_proj",
                                                          "model.layers.0.mlp.experts.down_proj"]
    with torch.device("meta"):
        model = build_on_meta(plan.spec.model, "causal_lm", None)
        wrapped = methods.prepare(model, plan.spec, "causal_lm", list(plan.targets))
    assert methods.count_parameters(wrapped)[0] == plan.predicted
    assert sorted(methods.adapted_modules(wrapped)) == sorted(plan.targets)


@pytest.mark.parametrize("override,said", [
    ("method=dora", "method=dora is invalid here: lora.proj='qkvogud' adapts the MoE experts (mlp.experts.gate_up_proj, "
                    "mlp.experts.down_proj), which peft adapts as parameters (target_parameters), and peft has no DoRA "
                    "for parameters (ParamWrapper refuses use_dora); use method=lora or method=rslora, or leave gud "
                    "out of lora.proj"),
    ("method=pissa", "method=pissa is invalid here: "),
    ("lora.dropout=0.05", "lora.dropout=0.05 is invalid here: "),
])
def test_what_peft_cannot_apply_to_the_experts_is_refused_in_one_line(tmp_path, override, said):
    folder = zoo.config_folder(tmp_path / "moe", "mixtral")
    with pytest.raises(ConfigError) as e:
        plan_run(compose_config(["model=hf", f"model.id={folder}", *EXPERTS_RUN, override]))
    assert str(e.value).startswith(said) and "\n" not in str(e.value)
    assert plan_run(compose_config(["model=hf", f"model.id={folder}", "lora.proj=qkvo", *MCQ, override]))


def test_qlora_on_the_experts_is_refused(folders):
    spec, model = skeleton(folders, "qwen3_moe")
    targets = projections.resolve_modules(model, "qwen3_moe", "gud", model.config)
    with pytest.raises(ConfigError, match="method=qlora is invalid here: .*bitsandbytes quantizes linear layers only"):
        methods.check_targets(run_spec(spec, "qlora", "gud"), model, targets)  # on CPU, checks.check_available says first


def test_a_dense_mlp_peft_would_move_is_refused(folders):
    """qwen3_moe with mlp_only_layers=[0]: layer 0's MLP is linear gate_proj/up_proj/down_proj, which peft 0.21
    reads as transformers-4 expert names and turns into the experts' parameters (2944 predicted, 4608 built)."""
    spec, model = skeleton(folders, "qwen3_moe-dense0")
    targets = projections.resolve_modules(model, "qwen3_moe", ALL, model.config, head="causal_lm")
    with pytest.raises(ConfigError, match=r"^lora.proj='all' adapts mlp.gate_proj, mlp.up_proj, mlp.down_proj of this "
                                          r"qwen3_moe model, which peft 0.21 takes for transformers-4 expert names"):
        methods.check_targets(run_spec(spec, "lora", ALL), model, targets)
    gud = projections.resolve_modules(model, "qwen3_moe", "gud", model.config)
    assert gud == ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"]


def test_experts_under_a_budget_and_out_of_packs(tmp_path):
    folder = zoo.config_folder(tmp_path / "moe", "qwen3_moe")
    cfg = compose_config(["model=hf", f"model.id={folder}", *EXPERTS_RUN, "lora.r=auto", "budget.max_trainable=20000"])
    plan = plan_run(cfg)
    per_rank = plan.predicted // plan.spec.lora.r
    assert plan.predicted <= 20000 < plan.predicted + per_rank

    from lorasweep.sweep.packs import why_alone
    assert why_alone(compose_config(["model=hf", f"model.id={folder}", *EXPERTS_RUN])).startswith("it adapts MoE experts")
    assert why_alone(compose_config(["model=hf", f"model.id={folder}", "lora.proj=qkvo", *MCQ])) is None
