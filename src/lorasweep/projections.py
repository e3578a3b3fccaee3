"""Projection codes (q k v o g u d) -> the module names a model family calls them.

A code string is a set of letters, printed in the canonical order `qkvogud`. Resolution runs on
the model's module names alone (a meta-device skeleton), so a bad code fails before any weight is
read, and never as a silent partial match: every letter must match exactly the number of modules
the architecture promises (one per layer, per attention block for encoder-decoders).
"""
from __future__ import annotations

import re
from torch import nn

from .spec import ConfigError

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
_ADAPTABLE = ("Linear", "Conv1D")


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
    return "".join(c for c in CANONICAL_ORDER if c in _family_table(family))


def check_code_for_family(code: str, family: str, field_name: str = "lora.proj") -> str:
    """Canonical code, or ConfigError if the family lacks a letter or would split a fused module."""
    code = canonical_code(code, field_name)
    table = _family_table(family)
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


def resolve_modules(model: nn.Module, family: str, code: str, config=None,
                    field_name: str = "lora.proj") -> list[str]:
    """Full names of the linear modules a code adapts in `model` (a meta skeleton is enough).

    Each letter must match at least one module and, given the model config, exactly as many as the
    architecture promises; the total is checked against `expected_module_count`.
    """
    code = check_code_for_family(code, family, field_name)
    table = _family_table(family)
    names = [n for n, m in model.named_modules() if type(m).__name__ in _ADAPTABLE]
    chosen: set[str] = set()
    for letter in code:
        pattern = re.compile(rf"(^|\.){table[letter]}$")
        hits = [n for n in names if pattern.search(n)]
        want = _per_letter(family, letter, config) if config is not None else None
        if not hits or (want is not None and len(hits) != want):
            raise ConfigError(
                f"{field_name}={code!r}: projection {letter!r} ({LETTER_MEANING[letter]}) matched "
                f"{len(hits)} modules of this {family} model, expected "
                f"{want if want is not None else 'at least 1'} (pattern {table[letter]!r}); "
                f"is model.family right?")
        chosen.update(hits)
    if config is not None and len(chosen) != expected_module_count(family, code, config):
        raise ConfigError(f"{field_name}={code!r}: matched {len(chosen)} modules, the {family} "
                          f"architecture promises {expected_module_count(family, code, config)}")
    return [n for n in names if n in chosen]  # the model's own order: layer by layer


def expected_module_count(family: str, code: str, config) -> int:
    """The number of distinct modules a code promises (letters of a fused module count once)."""
    fused = FUSED.get(family, "")
    total = sum(_per_letter(family, c, config) for c in code if c not in fused)
    if set(code) & set(fused):
        total += _per_letter(family, fused[0], config)
    return total


def _per_letter(family: str, letter: str, config) -> int:
    """Modules one letter matches: one per layer; T5 has attention in 3 places, MLPs in 2."""
    if family == "t5":
        enc = config.num_layers
        dec = getattr(config, "num_decoder_layers", None) or enc
        return enc + 2 * dec if letter in "qkvo" else enc + dec
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise ConfigError(f"cannot tell the number of layers of this {family} config")


def _family_table(family: str) -> dict[str, str]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ConfigError(f"model.family={family!r} is invalid: known families are "
                          f"{', '.join(sorted(FAMILIES))}") from None
