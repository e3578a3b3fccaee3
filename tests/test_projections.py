"""Projection codes resolved per family on tiny meta-device models: the table is the spec."""
import re

import pytest

from lorasweep.config.projection_codes import canonical_code, check_code_for_family
from lorasweep.config.spec import ModelSpec
from lorasweep.errors import ConfigError
from lorasweep.model.loading import build_on_meta
from lorasweep.model.projections import expected_module_count, resolve_modules

# (family, head, code, module names adapted in layer 0 — every tiny model has 2 layers)
TABLE = [
    ("qwen3", "causal_lm", "qk", ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]),
    ("qwen3", "causal_lm", "qvkogdu", [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]),
    ("llama", "causal_lm", "gdu", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                   "model.layers.0.mlp.down_proj"]),
    ("bert", "classification", "o", ["bert.encoder.layer.0.attention.output.dense"]),
    ("bert", "classification", "d", ["bert.encoder.layer.0.output.dense"]),
    ("bert", "classification", "qkvoud", [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"]),
    ("roberta", "classification", "v", ["roberta.encoder.layer.0.attention.self.value"]),
    ("gpt2", "causal_lm", "qkv", ["transformer.h.0.attn.c_attn"]),
    ("gpt2", "causal_lm", "qkvoud", ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                     "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]),
    ("t5", "seq2seq_lm", "q", ["encoder.block.0.layer.0.SelfAttention.q",
                               "decoder.block.0.layer.0.SelfAttention.q",
                               "decoder.block.0.layer.1.EncDecAttention.q"]),
    ("t5", "seq2seq_lm", "ud", ["encoder.block.0.layer.1.DenseReluDense.wi",
                                "encoder.block.0.layer.1.DenseReluDense.wo",
                                "decoder.block.0.layer.2.DenseReluDense.wi",
                                "decoder.block.0.layer.2.DenseReluDense.wo"]),
]


def _first_index(name: str) -> str:
    return re.search(r"\.(\d+)\.", name).group(1)  # the layer (block) number


def _tiny(family: str, head: str):
    return build_on_meta(ModelSpec(name=f"tiny-{family}", family=family, source="tiny"), head, 4)


@pytest.mark.parametrize("family,head,code,layer0", TABLE)
def test_resolution_table(family, head, code, layer0):
    model = _tiny(family, head)
    names = resolve_modules(model, family, code, model.config)
    assert [n for n in names if _first_index(n) == "0"] == layer0
    assert len(names) == expected_module_count(family, canonical_code(code), model.config) == 2 * len(layer0)
    assert set(n.replace(".0.", ".1.", 1) for n in layer0) <= set(names)


def test_code_is_a_set_printed_in_canonical_order():
    assert canonical_code("vq") == "qv"
    assert canonical_code("qvkogdu") == canonical_code("udgokvq") == "qkvogud"
    assert canonical_code("qqk") == "qk"


@pytest.mark.parametrize("code,needle", [
    ("", "empty"), ("qkx", "'x'"), ("QK", "'K', 'Q'"), (None, "empty")])
def test_bad_codes_name_the_code_and_the_valid_letters(code, needle):
    with pytest.raises(ConfigError) as e:
        canonical_code(code)
    assert needle in str(e.value) and "q k v o g u d" in str(e.value) and "lora.proj" in str(e.value)


def test_family_without_a_letter_is_refused_with_its_valid_codes():
    with pytest.raises(ConfigError) as e:
        check_code_for_family("qg", "bert")
    msg = str(e.value)
    assert "'g' (MLP gate)" in msg and "valid codes for bert: q k v o u d" in msg


def test_gpt2_fused_qkv_cannot_be_split():
    with pytest.raises(ConfigError, match="fuses q/k/v"):
        check_code_for_family("q", "gpt2")
    assert check_code_for_family("vkq", "gpt2") == "qkv"


def test_a_pattern_matching_nothing_is_an_error_not_a_partial_match():
    # a llama skeleton declared as bert: bert's module names match nothing
    model = _tiny("llama", "causal_lm")
    with pytest.raises(ConfigError, match="matched 0 modules"):
        resolve_modules(model, "bert", "q", model.config)


def test_gated_mlp_letter_on_ungated_t5_matches_nothing():
    model = _tiny("t5", "seq2seq_lm")
    with pytest.raises(ConfigError, match=r"'g' \(MLP gate\) matched 0"):
        resolve_modules(model, "t5", "g", model.config)


def test_unknown_family():
    with pytest.raises(ConfigError, match="model.family='mamba'"):
        check_code_for_family("q", "mamba")
