"""Projection codes (q k v o g u d, or `all`): validation, canonical order, and each family's module patterns.

A code string is a set of letters, printed in the canonical order `qkvogud`; `all` is a code of its
own: every linear layer of the model but its output head, as peft's `all-linear`. This half needs
no torch, so a config is checked (and a bad code refused) in milliseconds;
lorasweep.model.projections matches the patterns against a model's module names.

A family is transformers' `model_type` (config.json). Letters whose patterns are one and the same
name a fused module (gpt2's c_attn holds q, k and v; phi3's gate_up_proj holds g and u): they are
adapted all together or not at all (`fused_groups`).

MoE decoders (mixtral, qwen2_moe, qwen3_moe) hold their routed experts as fused 3-D parameters,
not linear layers: g u d name those parameters (`EXPERT_PATTERNS`), which peft adapts with its
parameter adapters (LoraConfig.target_parameters): no dropout, no DoRA (`parameter_letters`).
"""
from __future__ import annotations

import re
from typing import Mapping

from ..errors import ConfigError

_LAYER_PREFIX = re.compile(r"^.*\.\d+\.")  # up to the layer index: model.layers.3.self_attn.q_proj -> self_attn.q_proj
CANONICAL_ORDER = "qkvogud"
ALL = "all"  # every linear layer of the model but its output head (peft's all-linear)
LETTER_MEANING = {
    "q": "attention query", "k": "attention key", "v": "attention value",
    "o": "attention output", "g": "MLP gate", "u": "MLP up", "d": "MLP down",
}

# letter -> regex matching the tail of a module's dotted name
_DECODER = {"q": r"q_proj", "k": r"k_proj", "v": r"v_proj", "o": r"o_proj",
            "g": r"gate_proj", "u": r"up_proj", "d": r"down_proj"}
# MoE decoders (transformers 5): the routed experts are two 3-D parameters of mlp.experts, not linear
# layers: gate_up_proj (experts, 2 x intermediate, hidden) holds g and u fused, down_proj d. The router
# (mlp.gate) is never adapted; qwen2_moe's shared expert (linear mlp.shared_expert.*) is in lora.proj=all
# and reachable with +model.projections.
_EXPERTS = {"g": r"mlp\.experts\.gate_up_proj", "u": r"mlp\.experts\.gate_up_proj", "d": r"mlp\.experts\.down_proj"}
EXPERT_PATTERNS = frozenset(_EXPERTS.values())  # patterns naming parameters (peft target_parameters), not modules
_MOE = {**{c: _DECODER[c] for c in "qkvo"}, **_EXPERTS}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")
# gemma3 (the multimodal model): its vision tower has q_proj & co. too; the language model's layers only.
_GEMMA3 = {c: rf"language_model\.layers\.\d+\.(self_attn|mlp)\.{p}" for c, p in _DECODER.items()}
_BERT = {"q": r"attention\.self\.query", "k": r"attention\.self\.key",
         "v": r"attention\.self\.value", "o": r"attention\.output\.dense",
         "u": r"intermediate\.dense", "d": r"(?<!attention\.)output\.dense"}
_DEBERTA = {**_BERT, "q": r"attention\.self\.query_proj", "k": r"attention\.self\.key_proj",
            "v": r"attention\.self\.value_proj"}
_DISTILBERT = {"q": r"attention\.q_lin", "k": r"attention\.k_lin", "v": r"attention\.v_lin",
               "o": r"attention\.out_lin", "u": r"ffn\.lin1", "d": r"ffn\.lin2"}
# GPT-2 fuses q, k and v into one Conv1D (c_attn): they can only be adapted together.
_GPT2 = {"q": r"attn\.c_attn", "k": r"attn\.c_attn", "v": r"attn\.c_attn",
         "o": r"attn\.c_proj", "u": r"mlp\.c_fc", "d": r"mlp\.c_proj"}
_PHI = {"q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj",
        "o": r"self_attn\.dense", "u": r"mlp\.fc1", "d": r"mlp\.fc2"}
_PHI3 = {"q": r"self_attn\.qkv_proj", "k": r"self_attn\.qkv_proj", "v": r"self_attn\.qkv_proj",
         "o": r"self_attn\.o_proj", "g": r"mlp\.gate_up_proj", "u": r"mlp\.gate_up_proj",
         "d": r"mlp\.down_proj"}
_GPT_NEOX = {"q": r"attention\.query_key_value", "k": r"attention\.query_key_value",
             "v": r"attention\.query_key_value", "o": r"attention\.dense",
             "u": r"mlp\.dense_h_to_4h", "d": r"mlp\.dense_4h_to_h"}
_FALCON = {**_GPT_NEOX, **{c: r"self_attention\.query_key_value" for c in "qkv"},
           "o": r"self_attention\.dense"}
# ModernBERT: Wqkv holds q, k, v; mlp.Wi holds the GLU's gate and up halves.
_MODERNBERT = {"q": r"attn\.Wqkv", "k": r"attn\.Wqkv", "v": r"attn\.Wqkv", "o": r"attn\.Wo",
               "g": r"mlp\.Wi", "u": r"mlp\.Wi", "d": r"mlp\.Wo"}
# T5 v1.0 has one input projection `wi` (u); gated T5 v1.1 splits it into wi_0 (g) and wi_1 (u).
_T5 = {"q": r"(Self|EncDec)Attention\.q", "k": r"(Self|EncDec)Attention\.k",
       "v": r"(Self|EncDec)Attention\.v", "o": r"(Self|EncDec)Attention\.o",
       "g": r"DenseReluDense\.wi_0", "u": r"DenseReluDense\.wi(_1)?", "d": r"DenseReluDense\.wo"}

FAMILIES: dict[str, dict[str, str]] = {
    **{f: _DECODER for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                             "olmo", "olmo2", "granite")},
    **{f: _MOE for f in MOE_FAMILIES},
    "gemma3": _GEMMA3, "phi": _PHI, "phi3": _PHI3, "gpt_neox": _GPT_NEOX, "falcon": _FALCON, "gpt2": _GPT2,
    "bert": _BERT, "roberta": _BERT, "electra": _BERT, "deberta-v2": _DEBERTA, "distilbert": _DISTILBERT,
    "modernbert": _MODERNBERT, "t5": _T5,
}


def fused_groups(table: Mapping[str, str]) -> list[str]:
    """Letters that name one module (the same pattern), e.g. ['qkv'] for gpt2, ['qkv', 'gu'] for phi3."""
    by_pattern: dict[str, str] = {}
    for letter in CANONICAL_ORDER:
        if letter in table:
            by_pattern[table[letter]] = by_pattern.get(table[letter], "") + letter
    return [g for g in by_pattern.values() if len(g) > 1]



def canonical_code(code: object, field_name: str = "lora.proj") -> str:
    """Validate a projection code and return it in canonical order (`vq` -> `qv`); `all` stays `all`."""
    text = "" if code is None else str(code)
    if text.strip() == ALL:
        return ALL
    if not text.strip():
        raise ConfigError(f"{field_name}={text!r} is invalid: it is empty; use letters from "
                          f"{' '.join(CANONICAL_ORDER)} (e.g. qkvo), or all")
    bad = sorted({c for c in text if c not in CANONICAL_ORDER})
    if bad:
        raise ConfigError(f"{field_name}={text!r} is invalid: unknown projection code "
                          f"{', '.join(map(repr, bad))}; valid codes are {' '.join(CANONICAL_ORDER)} "
                          f"({', '.join(f'{k}={v}' for k, v in LETTER_MEANING.items())}), or all "
                          f"(every linear layer)")
    return "".join(c for c in CANONICAL_ORDER if c in text)


def family_letters(family: str, projections: Mapping[str, str] | None = None) -> str:
    return "".join(c for c in CANONICAL_ORDER if c in family_table(family, projections, strict=False))


def check_code_for_family(code: str, family: str, field_name: str = "lora.proj",
                          projections: Mapping[str, str] | None = None, strict: bool = True) -> str:
    """Canonical code, or ConfigError if the family lacks a letter or would split a fused module.
    `projections`: the model's own letter -> pattern entries over the family's (model.projections).
    strict=False (a model whose family comes from its config.json) leaves a letter the family
    lacks to model/projections.resolve_modules, which names the model's linear modules."""
    code = canonical_code(code, field_name)
    if code == ALL:
        return code
    table = family_table(family, projections, strict=strict)
    missing = [c for c in code if c not in table]
    if missing and strict:
        raise ConfigError(
            f"{field_name}={code!r} is invalid for the {family} family: it has no "
            f"{', '.join(f'{c!r} ({LETTER_MEANING[c]})' for c in missing)}; "
            f"valid codes for {family}: {' '.join(family_letters(family, projections))} or all; "
            f"or name the modules: +model.projections.{missing[0]}=<module name pattern>")
    for group in fused_groups(table):
        if 0 < len(set(code) & set(group)) < len(group):
            raise ConfigError(f"{field_name}={code!r} is invalid for the {family} family: it fuses "
                              f"{'/'.join(group)} into one {_what(table[group[0]])}, so adapt all of {group!r} or none")
    return code


def _what(pattern: str) -> str:
    """What a fused group is: 'module', or for MoE experts 'parameter (mlp.experts.gate_up_proj)'."""
    return "parameter (" + pattern.replace("\\", "") + ")" if pattern in EXPERT_PATTERNS else "module"


def parameter_letters(family: str, code: str, projections: Mapping[str, str] | None = None) -> str:
    """The letters of `code` that name MoE experts' parameters (peft's target_parameters), not modules."""
    if code == ALL:
        return ""
    table = family_table(family, projections, strict=False)
    return "".join(c for c in code if table.get(c) in EXPERT_PATTERNS)


def family_table(family: str, projections: Mapping[str, str] | None = None,
                 strict: bool = True) -> dict[str, str]:
    """The family's letter -> pattern map with `projections` over it. strict: an unknown family
    without projections of its own is an error; else it maps nothing."""
    if family not in FAMILIES and not projections and strict:
        raise ConfigError(f"model.family={family!r} is invalid: known families are "
                          f"{', '.join(sorted(FAMILIES))}; another model type runs with lora.proj=all, "
                          f"or with its modules named: +model.projections.q=self_attn.q_proj ...")
    return {**FAMILIES.get(family, {}), **dict(projections or {})}


def check_projections(projections: object) -> dict[str, str]:
    """model.projections: letter -> a regex matching the tail of the module names (a dict)."""
    if projections is None:
        return {}
    if not isinstance(projections, Mapping) or not all(
            k in CANONICAL_ORDER and len(k) == 1 and isinstance(v, str) and v for k, v in projections.items()):
        raise ConfigError(f"model.projections={projections!r} is invalid: a mapping of projection letters "
                          f"({' '.join(CANONICAL_ORDER)}) to module-name patterns, e.g. "
                          f"+model.projections.q=self_attn.q_proj")
    return {k: projections[k] for k in CANONICAL_ORDER if k in projections}


def module_tails(names: list[str]) -> list[str]:
    """Linear module names without their layer prefix, each once: what model.projections patterns match."""
    return list(dict.fromkeys(_LAYER_PREFIX.sub("", n) for n in names))
