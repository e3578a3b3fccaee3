"""Projection codes (q k v o g u d, or all) -> the module names a model family calls them.

The codes and each family's patterns are lorasweep.config.projection_codes. Resolution runs on
the model's module names alone (a meta-device skeleton), so a bad code fails before any weight is
read, and never as a silent partial match: every letter must match exactly the number of modules
the architecture promises (one per layer, per attention block for encoder-decoders). `all` is every
linear layer but the output head and the trained classification head, as peft's `all-linear`.

A target is a module's name, or for MoE experts a 3-D parameter's (model.layers.0.mlp.experts.down_proj):
peft adapts the first with target_modules, the second with target_parameters (`split_targets`).
"""
from __future__ import annotations

import re
from typing import Mapping

from torch import nn

from ..config.projection_codes import (ALL, LETTER_MEANING, MOE_FAMILIES, check_code_for_family,
                                       family_table, fused_groups, module_tails)
from ..errors import ConfigError

SEQ_CLS_HEADS = ("classifier", "score")  # peft's modules_to_save for sequence classification


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (gpt2 & co.): a linear layer whose weight is stored (fan_in, fan_out)."""
    return type(module).__name__ == "Conv1D"


def is_adaptable(module: nn.Module) -> bool:
    """A layer peft's LoRA wraps as a linear layer: nn.Linear and its subclasses (falcon's
    FalconLinear), GPT-2's Conv1D; the type test of peft's all-linear."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if is_adaptable(m)]


def target_names(model: nn.Module) -> list[str]:
    """What a projection letter may name, in the model's order: its linear layers and its 3-D
    parameters (MoE experts, fused: one tensor of all experts' weights), which peft adapts as parameters."""
    names = []
    for name, module in model.named_modules():
        if is_adaptable(module):
            names.append(name)
        names += [f"{name}.{p}" for p, t in module.named_parameters(recurse=False) if t.ndim == 3]
    return names


def split_targets(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """(module names, parameter names): peft's target_modules and target_parameters."""
    parameters = {n for n, _ in model.named_parameters()}
    return [t for t in targets if t not in parameters], [t for t in targets if t in parameters]


def all_linear(model: nn.Module, head: str | None = None) -> list[str]:
    """lora.proj=all: every linear layer but the output embedding (the LM head) and, for a
    classification head, the modules peft trains whole (modules_to_save: every module whose name
    ends in classifier or score, as peft matches them: distilbert's pre_classifier too)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip: set[str] = set()
    for name, module in model.named_modules():
        if (module is out and out is not None) or (head == "classification" and name.endswith(SEQ_CLS_HEADS)):
            skip.update(n for n, _ in module.named_modules(prefix=name))
    return [n for n in linear_names(model) if n not in skip]


def resolve_modules(model: nn.Module, family: str, code: str, config=None,
                    field_name: str = "lora.proj", projections: Mapping[str, str] | None = None,
                    head: str | None = None) -> list[str]:
    """Full names of the linear modules a code adapts in `model` (a meta skeleton is enough).

    Each letter must match at least one module and, given the model config, exactly as many as the
    architecture promises; the total is checked against `expected_module_count`. `projections`:
    the model's own letter -> pattern entries over its family's (model.projections); `head`: the
    task's head (for `all`, a classification head is trained whole, not adapted).
    """
    code = check_code_for_family(code, family, field_name, projections, strict=False)
    if code == ALL:
        names = all_linear(model, head)
        if not names:
            raise ConfigError(f"{field_name}=all: this {family} model has no linear layer to adapt")
        return names
    table = family_table(family, projections, strict=False)
    names = target_names(model)
    chosen: set[str] = set()
    for letter in code:
        if letter not in table:
            raise ConfigError(_unmapped(field_name, code, letter, family, names))
        pattern = re.compile(rf"(^|\.){table[letter]}$")
        hits = [n for n in names if pattern.search(n)]
        want = _per_letter(family, letter, config) if config is not None else None
        if not hits or (want is not None and len(hits) != want):
            raise ConfigError(
                f"{field_name}={code!r}: projection {letter!r} ({LETTER_MEANING[letter]}) matched "
                f"{len(hits)} modules of this {family} model, expected "
                f"{want if want is not None else 'at least 1'} (pattern {table[letter]!r}); "
                f"is model.family right? Its linear modules: {', '.join(module_tails(names))}")
        chosen.update(hits)
    if config is not None and len(chosen) != expected_module_count(family, code, config, projections):
        raise ConfigError(f"{field_name}={code!r}: matched {len(chosen)} modules, the {family} "
                          f"architecture promises {expected_module_count(family, code, config, projections)}")
    return [n for n in names if n in chosen]  # the model's own order: layer by layer


def _unmapped(field_name: str, code: str, letter: str, family: str, names: list[str]) -> str:
    return (f"{field_name}={code!r}: the {family} model has no map for {letter!r} ({LETTER_MEANING[letter]}); "
            f"its linear modules are {', '.join(module_tails(names))}: name the one it is, e.g. "
            f"+model.projections.{letter}=<a name above, a regex on the name's end>, or use lora.proj=all")


def expected_module_count(family: str, code: str, config, projections: Mapping[str, str] | None = None) -> int:
    """The number of distinct modules a code promises (letters of a fused module count once)."""
    table = family_table(family, projections, strict=False)
    total = sum(_per_letter(family, c, config) for c in code)
    for group in fused_groups(table):
        if set(group) <= set(code):
            total -= (len(group) - 1) * _per_letter(family, group[0], config)
    return total


def _per_letter(family: str, letter: str, config) -> int:
    """Modules one letter matches: one per layer; T5 has attention in 3 places, MLPs in 2; an MoE
    decoder's MLP letters one per layer with experts."""
    if family in MOE_FAMILIES and letter in "gud":
        return _moe_layers(config)
    if family == "t5":
        enc = config.num_layers
        dec = getattr(config, "num_decoder_layers", None) or enc
        return enc + 2 * dec if letter in "qkvo" else enc + dec
    text = config.get_text_config() if hasattr(config, "get_text_config") else config  # gemma3: its language model
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(text, attr, None):
            return int(getattr(text, attr))
    raise ConfigError(f"cannot tell the number of layers of this {family} config")


def _moe_layers(config) -> int:
    """Layers with experts (a sparse MoE block). qwen2_moe/qwen3_moe may keep a dense MLP in some
    (mlp_only_layers, decoder_sparse_step): transformers' own rule, as in their decoder layers."""
    n = int(config.num_hidden_layers)
    if not hasattr(config, "decoder_sparse_step"):  # mixtral: every layer
        return n
    step, dense = config.decoder_sparse_step or 1, set(config.mlp_only_layers or ())
    return sum(1 for i in range(n) if i not in dense and config.num_experts > 0 and (i + 1) % step == 0)
