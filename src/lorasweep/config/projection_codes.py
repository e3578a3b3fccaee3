"""Projection codes (q k v o g u d): validation, canonical order, and each family's module patterns.

A code string is a set of letters, printed in the canonical order `qkvogud`. This half needs no
torch, so a config is checked (and a bad code refused) in milliseconds; lorasweep.model.projections
matches the patterns against a model's module names.
"""
from __future__ import annotations

from ..errors import ConfigError

CANONICAL_ORDER = "qkvogud"
LETTER_MEANING = {
    "q": "attention query", "k": "attention key", "v": "attention value",
    "o": "attention output", "g": "MLP gate", "u": "MLP up", "d": "MLP down",
}

# letter -> regex matching the tail of a module's dotted name
_DECODER = {"q": r"q_proj", "k": r"k_proj", "v": r"v_proj", "o": r"o_proj",
            "g": r"gate_proj", "u": r"up_proj", "d": r"down_proj"}
_BERT = {"q": r"attention\.self\.query", "k": r"attention\.self\.key",
         "v": r"attention\.self\.value", "o": r"attention\.output\.dense",
         "u": r"intermediate\.dense", "d": r"(?<!attention\.)output\.dense"}
# GPT-2 fuses q, k and v into one Conv1D (c_attn): they can only be adapted together.
_GPT2 = {"q": r"attn\.c_attn", "k": r"attn\.c_attn", "v": r"attn\.c_attn",
         "o": r"attn\.c_proj", "u": r"mlp\.c_fc", "d": r"mlp\.c_proj"}
# T5 v1.0 has one input projection `wi` (u); gated T5 v1.1 splits it into wi_0 (g) and wi_1 (u).
_T5 = {"q": r"(Self|EncDec)Attention\.q", "k": r"(Self|EncDec)Attention\.k",
       "v": r"(Self|EncDec)Attention\.v", "o": r"(Self|EncDec)Attention\.o",
       "g": r"DenseReluDense\.wi_0", "u": r"DenseReluDense\.wi(_1)?", "d": r"DenseReluDense\.wo"}

FAMILIES: dict[str, dict[str, str]] = {
    "llama": _DECODER, "qwen3": _DECODER, "qwen2": _DECODER, "mistral": _DECODER,
    "bert": _BERT, "roberta": _BERT, "gpt2": _GPT2, "t5": _T5,
}
FUSED = {"gpt2": "qkv"}


def canonical_code(code: object, field_name: str = "lora.proj") -> str:
    """Validate a projection code and return it in canonical order (`vq` -> `qv`)."""
    text = "" if code is None else str(code)
    if not text.strip():
        raise ConfigError(f"{field_name}={text!r} is invalid: it is empty; use letters from "
                          f"{' '.join(CANONICAL_ORDER)} (e.g. qkvo)")
    bad = sorted({c for c in text if c not in CANONICAL_ORDER})
    if bad:
        raise ConfigError(f"{field_name}={text!r} is invalid: unknown projection code "
                          f"{', '.join(map(repr, bad))}; valid codes are {' '.join(CANONICAL_ORDER)} "
                          f"({', '.join(f'{k}={v}' for k, v in LETTER_MEANING.items())})")
    return "".join(c for c in CANONICAL_ORDER if c in text)


def family_letters(family: str) -> str:
    return "".join(c for c in CANONICAL_ORDER if c in family_table(family))


def check_code_for_family(code: str, family: str, field_name: str = "lora.proj") -> str:
    """Canonical code, or ConfigError if the family lacks a letter or would split a fused module."""
    code = canonical_code(code, field_name)
    table = family_table(family)
    missing = [c for c in code if c not in table]
    if missing:
        raise ConfigError(
            f"{field_name}={code!r} is invalid for the {family} family: it has no "
            f"{', '.join(f'{c!r} ({LETTER_MEANING[c]})' for c in missing)}; "
            f"valid codes for {family}: {' '.join(family_letters(family))}")
    fused = FUSED.get(family, "")
    if fused and 0 < len(set(code) & set(fused)) < len(fused):
        raise ConfigError(f"{field_name}={code!r} is invalid for the {family} family: it fuses "
                          f"{'/'.join(fused)} into one module, so adapt all of {fused!r} or none")
    return code


def family_table(family: str) -> dict[str, str]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ConfigError(f"model.family={family!r} is invalid: known families are "
                          f"{', '.join(sorted(FAMILIES))}") from None
