"""Projection codes (q k v o g u d) -> the module names a model family calls them.

The codes and each family's patterns are lorasweep.config.projection_codes. Resolution runs on
the model's module names alone (a meta-device skeleton), so a bad code fails before any weight is
read, and never as a silent partial match: every letter must match exactly the number of modules
the architecture promises (one per layer, per attention block for encoder-decoders).
"""
from __future__ import annotations

import re
from torch import nn

from ..config.projection_codes import FUSED, LETTER_MEANING, check_code_for_family, family_table
from ..errors import ConfigError

_ADAPTABLE = ("Linear", "Conv1D")  # the module types peft's LoRA wraps here


def resolve_modules(model: nn.Module, family: str, code: str, config=None,
                    field_name: str = "lora.proj") -> list[str]:
    """Full names of the linear modules a code adapts in `model` (a meta skeleton is enough).

    Each letter must match at least one module and, given the model config, exactly as many as the
    architecture promises; the total is checked against `expected_module_count`.
    """
    code = check_code_for_family(code, family, field_name)
    table = family_table(family)
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
