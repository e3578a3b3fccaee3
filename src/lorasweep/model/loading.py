"""Model loading: one entry per ModelSpec source (package, gguf_package, hub, tiny).

- `model_config(spec)`: the config alone, no weights (for parameter counting and budgets);
- `build_on_meta(spec, head)`: the architecture on the meta device, to resolve module names before
  any weight is read (milliseconds);
- `load_model(spec, head)`: real float32 weights on CPU and a tokenizer ready for training;
  `load_with_notes` also says which weights the checkpoint did not have (a new head), in
  `LoadNotes`, instead of transformers' load report (a table with terminal colour codes).

Heads: "classification" (AutoModelForSequenceClassification), "causal_lm" (AutoModelForCausalLM),
"seq2seq_lm" (AutoModelForSeq2SeqLM, for t5).
"""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig,
                          PreTrainedTokenizerBase)

from ..config import hf_model
from ..config.spec import MODEL_SOURCES, ModelSpec
from ..errors import ConfigError, ModelUnavailableError
from .assets import CONF_MODEL_DIR, gguf_model_dir, package_model_dir, packaged_specs
from .tiny_tokenizer import build_tiny_tokenizer

__all__ = ["HEADS", "LoadNotes", "model_config", "build_on_meta", "load_model", "load_with_notes",
           "label_maps", "tiny_config"]

HEADS = {
    "classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
}

# Tiny random models: hidden 64, 2 layers, 4 heads. Small enough that building one and a forward
# pass take well under a second; large enough to exercise every projection of the family.
# vocab_size 128 covers the ~105-token character-level tiny tokenizer.
_TINY_DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3": ("Qwen3Config", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  intermediate_size=128, max_position_embeddings=512,
                                  tie_word_embeddings=True)),
    "llama": ("LlamaConfig", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  intermediate_size=128, max_position_embeddings=512,
                                  tie_word_embeddings=True)),  # tied, like SmolLM2
    "bert": ("BertConfig", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128,
                                max_position_embeddings=512)),
    # RoBERTa positions start at pad_token_id + 1, hence 512 + 2 positions as in roberta-base.
    "roberta": ("RobertaConfig", dict(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=128,
                                      max_position_embeddings=514, type_vocab_size=1)),
    "gpt2": ("GPT2Config", dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                n_positions=512)),
    "t5": ("T5Config", dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                            num_decoder_layers=2, num_heads=4)),
}


def tiny_config(spec: ModelSpec) -> PretrainedConfig:
    """The config of a tiny random model: family defaults, then spec.tiny, then the tokenizer's
    special-token ids."""
    if spec.family not in _TINY_DEFAULTS:
        raise ValueError(f"model {spec.name!r}: no tiny model for family {spec.family!r}; "
                         f"valid are {sorted(_TINY_DEFAULTS)}")
    cls_name, defaults = _TINY_DEFAULTS[spec.family]
    import transformers

    tok = build_tiny_tokenizer(spec.family)
    special_ids = {"pad_token_id": tok.pad_token_id}
    if tok.eos_token_id is not None:
        special_ids["eos_token_id"] = tok.eos_token_id
    if spec.family in ("qwen3", "llama", "gpt2"):
        special_ids["bos_token_id"] = tok.bos_token_id
    elif spec.family == "roberta":
        special_ids.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    elif spec.family == "t5":
        special_ids["decoder_start_token_id"] = tok.pad_token_id  # as in T5
    kwargs = {**defaults, **special_ids, **dict(spec.tiny)}
    config = getattr(transformers, cls_name)(**kwargs)
    if config.vocab_size < len(tok):
        raise ValueError(f"model {spec.name!r}: tiny.vocab_size={config.vocab_size} is smaller "
                         f"than the tiny tokenizer ({len(tok)} tokens)")
    return config


def model_config(spec: ModelSpec, num_labels: int | None = None) -> PretrainedConfig:
    """The model's config, no weights read. A gguf_package spec is converted first if needed."""
    if spec.source == "tiny":
        config = tiny_config(spec)
    elif spec.source == "hub" and spec.config:
        config = _shipped_config(spec)
    elif spec.source == "hub":
        config = _from_hub(spec, lambda **kw: AutoConfig.from_pretrained(spec.id, **kw))
    elif spec.source == "hf":  # config.json alone: the folder's, the HF cache's, or fetched alone
        config = AutoConfig.from_pretrained(hf_model.config_path(spec.id).parent)
    else:
        config = AutoConfig.from_pretrained(_local_dir(spec))
    if spec.layers:
        _keep_layers(spec, config)
    if num_labels:
        config.num_labels = num_labels
    return config


def _keep_layers(spec: ModelSpec, config: PretrainedConfig) -> None:
    """model.layers=N: the first N of the checkpoint's layers (num_hidden_layers is every family's
    name for it, through the config's attribute_map)."""
    available = config.num_hidden_layers
    if spec.layers > available:
        raise ConfigError(f"model {spec.name!r}: model.layers={spec.layers} is invalid: the checkpoint has "
                         f"{available} layers; keep 1 to {available}, or 0 for all")
    config.num_hidden_layers = spec.layers


def _shipped_config(spec: ModelSpec) -> PretrainedConfig:
    """A hub model's architecture from the config.json shipped under conf/model/ (no network)."""
    path = CONF_MODEL_DIR / spec.config
    try:
        fields = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelUnavailableError(f"model {spec.name!r}: model.config={spec.config!r} cannot be read "
                                    f"({path}): {err}") from err
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_on_meta(spec: ModelSpec, head: str, num_labels: int | None = None,
                  vocab_size: int | None = None) -> nn.Module:
    """The architecture with `head` on the meta device: names and shapes, no memory, no weights.
    `vocab_size` grows the embedding as token injection will (the same shapes as a resize)."""
    auto = _auto_class(spec, head)
    config = model_config(spec, num_labels)
    if vocab_size:
        config.vocab_size = vocab_size
    with torch.device("meta"):
        return _from_config(auto, config, spec, head)


@dataclass(frozen=True)
class LoadNotes:
    """What loading a checkpoint into the model left over, by weight name (empty for tiny models,
    which are built from their config: all their weights start at random)."""

    new: dict[str, int] = field(default_factory=dict)  # weights the checkpoint lacks (start at random): parameters
    unused: tuple[str, ...] = ()   # the checkpoint's weights that the model has no place for
    layers_left_out: int = 0       # model.layers=N: how many of the checkpoint's top layers were not loaded


def load_model(spec: ModelSpec, head: str, num_labels: int | None = None, quantization=None,
               labels: Sequence[str] | None = None) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Real weights in float32 on CPU, and a tokenizer with a pad token, padding on the right.

    `quantization` (a BitsAndBytesConfig, method=qlora) loads the base quantized on the GPU.
    `labels`: a classification task's label names, in id order: they go into the config's
    id2label/label2id, so that every model saved from it answers names (a pipeline says
    `noun.animal`, not `LABEL_2`)."""
    model, tokenizer, _ = load_with_notes(spec, head, num_labels, quantization, labels)
    return model, tokenizer


def load_with_notes(spec: ModelSpec, head: str, num_labels: int | None = None, quantization=None,
                    labels: Sequence[str] | None = None) -> tuple[nn.Module, PreTrainedTokenizerBase, LoadNotes]:
    """load_model, and which weights the checkpoint did not have (LoadNotes): transformers' own
    report of them is not printed; the caller says what matters in its words (a new head, trained)."""
    auto = _auto_class(spec, head)
    if quantization is not None and spec.source == "tiny":
        raise ValueError(f"model {spec.name!r}: a tiny random model cannot be loaded quantized")
    if labels and num_labels not in (None, len(labels)):
        raise ValueError(f"num_labels={num_labels} but {len(labels)} label names")
    num_labels = len(labels) if labels else num_labels
    notes = LoadNotes()
    if spec.source == "tiny":
        config = model_config(spec, num_labels)
        with torch.random.fork_rng(devices=[]):  # reproducible weights, caller's RNG untouched
            torch.manual_seed(0)
            model = _from_config(auto, config, spec, head)
        tokenizer = build_tiny_tokenizer(spec.family)
    else:
        kwargs: dict[str, Any] = {"dtype": getattr(torch, spec.dtype), "output_loading_info": True}
        if quantization is not None:  # bitsandbytes: compute in bf16, weights placed on the GPU
            kwargs.update(dtype=torch.bfloat16, quantization_config=quantization, device_map={"": 0})
        if spec.layers:  # the config decides what is built (num_labels too); the top layers' weights stay unread
            kwargs["config"] = model_config(spec, num_labels)
        elif num_labels:
            kwargs["num_labels"] = num_labels
        with _no_load_report():
            if spec.source == "hub" or _hf_hub_id(spec):
                # transformers 5.23 does not pass local_files_only on to its PEFT adapter lookup,
                # which then retries the hub for ~25 s: hand it over explicitly.
                model, info = _from_hub(spec, lambda **kw: auto.from_pretrained(
                    spec.id, **kwargs, **kw, adapter_kwargs=dict(kw)))
                tokenizer = _from_hub(spec, lambda **kw: AutoTokenizer.from_pretrained(spec.id, **kw))
            else:
                folder = _local_dir(spec)
                model, info = auto.from_pretrained(folder, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(folder)
        notes = _notes(spec, model, info)
    if labels and head == "classification":
        model.config.id2label, model.config.label2id = label_maps(labels)
    _set_padding(spec, model, tokenizer, head)
    return model, tokenizer, notes


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id) as transformers' configs hold them."""
    return dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}


class _LoadReportFilter(logging.Filter):
    """Drops transformers' load report (a table of missing and unexpected weights, with terminal
    colour codes even in a log file); LoadNotes carries what it says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def _no_load_report():
    logger = logging.getLogger("transformers.modeling_utils")  # where from_pretrained logs the report
    quiet = _LoadReportFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|block)\.(\d+)\.")  # llama/qwen3, bert, gpt2, t5


def _notes(spec: ModelSpec, model: nn.Module, info: dict) -> LoadNotes:
    weights = dict(model.named_parameters())
    new = {k: weights[k].numel() if k in weights else 0 for k in sorted(info.get("missing_keys") or ())}
    unused, left_out = [], set()
    for name in sorted(info.get("unexpected_keys") or ()):
        index = _LAYER_INDEX.search(name) if spec.layers else None
        if index and int(index.group(1)) >= spec.layers:
            left_out.add(int(index.group(1)))  # left out on purpose (model.layers), not a mismatch
        else:
            unused.append(name)
    return LoadNotes(new=new, unused=tuple(unused), layers_left_out=len(left_out))


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer alone (no weights): token injection plans its new ids with it."""
    if spec.source == "tiny":
        return build_tiny_tokenizer(spec.family)
    if spec.source == "hub" or _hf_hub_id(spec):
        return _from_hub(spec, lambda **kw: AutoTokenizer.from_pretrained(spec.id, **kw))
    return AutoTokenizer.from_pretrained(_local_dir(spec))


def _auto_class(spec: ModelSpec, head: str):
    if head not in HEADS:
        raise ValueError(f"head={head!r} is invalid: valid are {sorted(HEADS)}")
    if spec.source not in MODEL_SOURCES:
        raise ValueError(f"model {spec.name!r}: source={spec.source!r} is invalid: valid are "
                         f"{MODEL_SOURCES}")
    return HEADS[head]


def _from_config(auto, config: PretrainedConfig, spec: ModelSpec, head: str) -> nn.Module:
    try:
        return auto.from_config(config, dtype=getattr(torch, spec.dtype))
    except ValueError as err:  # the auto class has no mapping for this config type
        raise ValueError(f"model {spec.name!r} (family {spec.family}, {type(config).__name__}) "
                         f"has no {head!r} head in transformers") from err


def _hf_hub_id(spec: ModelSpec) -> bool:
    """A source hf model named by a hub id (not a local folder)."""
    return spec.source == "hf" and hf_model.local_folder(spec.id) is None


def _local_dir(spec: ModelSpec) -> Path:
    if spec.source == "hf":
        folder = hf_model.local_folder(spec.id)
        if folder is not None:
            return folder
    if spec.source == "package":
        return package_model_dir(spec)
    if spec.source == "gguf_package":
        return gguf_model_dir(spec)
    raise ValueError(f"model {spec.name!r}: source {spec.source!r} has no local folder")


def _from_hub(spec: ModelSpec, load):
    """Call `load(**kw)` from the local HF cache; reach for the hub only when it answers at once."""
    try:
        return load(local_files_only=True)
    except OSError as local_err:
        if not hf_model.hub_reachable():
            raise ModelUnavailableError(_hub_message(spec)) from local_err
    try:
        return load()
    except OSError as err:
        raise ModelUnavailableError(f"model {spec.name!r} (hub id {spec.id}) could not be "
                                    f"downloaded from the hub: {err}") from err


def _hub_message(spec: ModelSpec) -> str:
    try:
        offline = ", ".join(s.name for s in packaged_specs()) or "minilm, smollm2-135m"
    except Exception:  # conf/ not shipped (installed as a wheel): name the defaults
        offline = "minilm, smollm2-135m"
    return (f"model {spec.name!r} (hub id {spec.id}) is not in the local HF cache and the hub "
            f"cannot be reached from here. Packaged models that work offline: {offline}; or "
            f"download it where a hub is reachable and set HF_HOME.")


def _set_padding(spec: ModelSpec, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 head: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"model {spec.name!r}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # llama/gpt2 convention
    tokenizer.padding_side = "right"  # training; generation code pads left itself
    if head == "classification" or model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
