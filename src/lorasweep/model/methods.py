"""Fine-tuning methods behind one interface: prepare(model) -> the model to train.

none    the base model, evaluated only (every ablation's baseline): nothing is trainable
full    every weight is trained
lora    low-rank adapters on the chosen projections (peft); a classification head is trained alongside
dora    LoRA with a learned magnitude vector per adapted weight (peft's use_dora)
rslora  LoRA scaled by alpha / sqrt(r) instead of alpha / r (peft's use_rslora): the update's size
        no longer shrinks as r grows, so large ranks learn at the same lr
pissa   LoRA initialised from the weight's principal singular vectors (peft's init_lora_weights="pissa");
        the base weights become the residual, so the saved adapter is converted to a plain LoRA
        adapter of rank 2r that applies to the original base (save_adapter)
qlora   LoRA on a 4-bit NF4 base (bitsandbytes, CUDA only); qlora8 on an 8-bit LLM.int8 base
All adapter methods train exactly the same parameters as lora (dora: plus the magnitudes).

MoE experts (g u d on mixtral, qwen2_moe, qwen3_moe) are 3-D parameters, not linear layers: peft
adapts them with target_parameters (its lora.ParamWrapper: one rank-r pair per expert, applied to
the fused weight through a parametrization), which takes lora and rslora only, without dropout
(`check_targets` refuses the rest before launch).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import ParamWrapper
from torch import nn

from ..compat import peft_moe_renamed
from ..config.projection_codes import parameter_letters
from ..config.spec import ADAPTER_METHODS, PISSA_INIT, QUANTIZED_METHODS, RunSpec
from ..errors import ConfigError
from .projections import is_conv1d, module_tails, split_targets

__all__ = ["ADAPTER_METHODS", "prepare", "save_initial", "save_adapter",
           "count_parameters", "adapted_modules", "check_targets"]
_TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM,
               "seq2seq_lm": TaskType.SEQ_2_SEQ_LM}


def quantization_config(method: str):
    """transformers' BitsAndBytesConfig for a quantized method, None for the others."""
    if method not in QUANTIZED_METHODS:
        return None
    from transformers import BitsAndBytesConfig

    if method == "qlora8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def prepare(model: nn.Module, spec: RunSpec, head: str, targets: list[str], token_ids=()) -> nn.Module:
    """Apply the run's method. `targets` are the full module names resolved from the projection code;
    `token_ids` the injected tokens, whose embedding rows adapter methods train when tokens.train."""
    if spec.method == "none":
        model.requires_grad_(False)
        return model
    if spec.method == "full":
        model.requires_grad_(True)
        return model
    if spec.method in QUANTIZED_METHODS:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    modules, parameters = split_targets(model, targets)
    config = LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=modules,  # exact names: suffix matching would confuse bert's two *output.dense
        target_parameters=parameters or None,  # MoE experts' 3-D weights, exact names too
        use_dora=spec.method == "dora", use_rslora=spec.method == "rslora",
        init_lora_weights="pissa" if spec.method == "pissa" else True,
        trainable_token_indices=list(token_ids) if token_ids and spec.tokens.train else None,
        task_type=_TASK_TYPES[head],
        fan_in_fan_out=_conv1d(model, targets))  # GPT-2's Conv1D stores weights transposed
    return get_peft_model(model, config)


# Why peft 0.21 cannot apply a method to a parameter (lora.ParamWrapper); lora and rslora it can.
_NOT_ON_PARAMETERS = {
    "dora": "peft has no DoRA for parameters (ParamWrapper refuses use_dora)",
    "pissa": "pissa initialises from a module's weight matrix, which the experts' block has not",
    "qlora": "bitsandbytes quantizes linear layers only: the experts, most of the model, would stay "
             "unquantized (and float32 after peft's k-bit preparation)",
}


def check_targets(spec: RunSpec, model: nn.Module, targets: list[str]) -> None:
    """Refuse, before launch and in one line, what peft cannot adapt as asked: a method or dropout it
    cannot apply to the MoE experts' parameters, a module it would move onto the experts."""
    modules, parameters = split_targets(model, targets)
    renamed = [t for t in modules if t.rsplit(".", 1)[-1] in peft_moe_renamed(model.config.model_type)]
    if renamed:
        raise ConfigError(f"lora.proj={spec.lora.proj!r} adapts {', '.join(module_tails(renamed))} of this "
                          f"{model.config.model_type} model, which peft 0.21 takes for transformers-4 expert names "
                          f"and adapts the experts instead (its v4-to-v5 adapter conversion): it cannot adapt "
                          f"them; use projection letters (e.g. lora.proj=qkvogud), which leave them out")
    if not parameters:
        return
    letters = parameter_letters(spec.model.family, spec.lora.proj, spec.model.projections) or "the experts' letters"
    what = (f"lora.proj={spec.lora.proj!r} adapts the MoE experts ({', '.join(module_tails(parameters))}), which "
            f"peft adapts as parameters (target_parameters)")
    if spec.method not in ("lora", "rslora"):
        why = _NOT_ON_PARAMETERS["qlora" if spec.method in QUANTIZED_METHODS else spec.method]
        raise ConfigError(f"method={spec.method} is invalid here: {what}, and {why}; use method=lora or "
                          f"method=rslora, or leave {letters} out of lora.proj")
    if spec.lora.dropout:
        raise ConfigError(f"lora.dropout={spec.lora.dropout} is invalid here: {what}, whose update is added to "
                          f"the weight, with no input of its own to drop out (peft refuses lora_dropout != 0); "
                          f"set lora.dropout=0, or leave {letters} out of lora.proj")


def _conv1d(model: nn.Module, targets: list[str]) -> bool:
    """Whether the targets are transformers' Conv1D (gpt2 & co.), whose weight is stored (fan_in, fan_out)."""
    modules = dict(model.named_modules())
    return any(is_conv1d(modules[t]) for t in targets if t in modules)


def save_initial(model: nn.Module, spec: RunSpec, folder: Path) -> Path | None:
    """PiSSA only: save the adapter as initialised (marked as a plain init, as peft requires), so
    that the trained one can be converted to a LoRA adapter for the original base."""
    if spec.method != "pissa":
        return None
    config = model.peft_config["default"]
    config.init_lora_weights = True  # else loading it would subtract the principal part a second time
    target = folder / PISSA_INIT
    model.save_pretrained(target)
    config.init_lora_weights = "pissa"
    return target / "default" if (target / "default").is_dir() else target


def save_adapter(model: nn.Module, spec: RunSpec, target: Path, initial: Path | None) -> None:
    """The adapter in PEFT format, loadable on the unmodified base model.

    Never the whole embedding matrix: peft would save it (113 MB for SmolLM2) once injected tokens
    grew it, but their rows are re-made deterministically (lorasweep.model.tokens.inject, which
    lorasweep.run.adapters does before loading) and trained rows are saved as peft's token deltas."""
    if initial is None:
        model.save_pretrained(target, save_embedding_layers=False)
        save_labels(model, target)
        return
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    # peft 0.21's conversion keeps only the lora_A/lora_B tensors: a trained classification head
    # (modules_to_save) would be lost, so it is written back into the converted file.
    extra = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
             if "lora_" not in k}
    # peft loads the initial adapter from dirname/basename: it has a folder of its own. Loading it
    # beside the trained one makes peft warn that PiSSA should not be mixed with other adapters,
    # which is exactly the conversion it asks for: that warning is silenced here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
        model.save_pretrained(target, path_initial_model_for_weight_conversion=str(initial),
                              save_embedding_layers=False)
    shutil.rmtree(initial.parent if initial.name == "default" else initial, ignore_errors=True)
    if extra:
        weights = target / "adapter_model.safetensors"
        save_file({**load_file(weights), **extra}, weights, metadata={"format": "pt"})
    save_labels(model, target)


LABELS_FILE = "labels.json"


def save_labels(model: nn.Module, target: Path) -> None:
    """A classification adapter's label names beside it, as `labels.json` = {"id2label", "label2id"}
    as a config.json has them (ids as strings): peft's adapter_config.json has no place for them, and
    a config.json there would make transformers take the folder for a whole model. Given to
    `AutoPeftModelForSequenceClassification.from_pretrained(adapter, id2label=<ids made ints>,
    label2id=...)`, the model answers names (README). Nothing for other heads."""
    if getattr(model, "peft_config", {}).get("default") is None or \
            model.peft_config["default"].task_type != TaskType.SEQ_CLS:
        return
    config = model.config
    labels = {"id2label": {str(i): name for i, name in config.id2label.items()}, "label2id": dict(config.label2id)}
    (target / LABELS_FILE).write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting tied weights once; peft's own count for adapted models."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # parameters() yields a tied weight once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapted_modules(model: nn.Module) -> list[str]:
    """Names (as in the base model) of the modules that carry a LoRA adapter; for an adapted parameter
    (MoE experts), the parameter's: peft nests one ParamWrapper per parameter over the experts module
    (mlp.experts, mlp.experts.base_layer), each naming its parameter."""
    prefix = "base_model.model."
    return [_adapted_name(name.removeprefix(prefix), module) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and len(getattr(module, "lora_A")) > 0]


def _adapted_name(name: str, module: nn.Module) -> str:
    if isinstance(module, ParamWrapper):
        return f"{name.replace('.base_layer', '')}.{module.parameter_name}"
    return name
