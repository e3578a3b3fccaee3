"""Tiny configs of transformers' common decoder and encoder families, and local model folders made
from them (random weights, a character-level tokenizer saved beside): "a model of one's own" without
a hub. Hidden 32, 2 layers, vocab 128 (the tiny tokenizer has ~105 tokens)."""
from __future__ import annotations

from pathlib import Path

_SPECIAL = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)  # the decoder tokenizer's <|pad|>, <|im_start|>, <|im_end|>
_DEC = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, intermediate_size=64, max_position_embeddings=256, **_SPECIAL)
_MOE = dict(_DEC, num_experts_per_tok=2, moe_intermediate_size=16)
_ENC = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=256, pad_token_id=0)

CONFIGS: dict[str, dict] = {  # model_type -> AutoConfig.for_model kwargs
    **{f: _DEC for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
                         "granite")},
    "mixtral": dict(_MOE, num_local_experts=4),
    "qwen2_moe": dict(_MOE, num_experts=4, shared_expert_intermediate_size=32),
    "qwen3_moe": dict(_MOE, num_experts=4),
    "phi": dict(_DEC), "phi3": dict(_DEC),
    "gpt_neox": dict(_DEC, rotary_pct=0.25),
    "falcon": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **_SPECIAL),
    "gpt2": dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=256, **_SPECIAL),
    "bert": _ENC, "roberta": dict(_ENC, type_vocab_size=1), "electra": dict(_ENC, embedding_size=16),
    "deberta-v2": dict(_ENC, type_vocab_size=0), "modernbert": dict(_ENC, cls_token_id=2, sep_token_id=3,
                                                                   bos_token_id=2, eos_token_id=3),
    "distilbert": dict(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=256,
                       pad_token_id=0),
    # the multimodal gemma3: a language model beside a (tiny) vision tower
    "gemma3": dict(text_config=dict(_DEC, vocab_size=300), mm_tokens_per_image=4, image_token_index=299,
                   boi_token_index=297, eoi_token_index=298,
                   vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, image_size=28, patch_size=14)),
    "t5": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
}
DECODERS = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
            "gemma3", "gemma3_text", "phi", "phi3", "olmo", "olmo2", "granite", "gpt_neox", "gpt2", "falcon")
ENCODERS = ("bert", "roberta", "deberta-v2", "distilbert", "electra", "modernbert")


def tiny_config(model_type: str, **over):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **over})


def config_folder(folder: Path, model_type: str, **over) -> Path:
    """A folder holding config.json alone: all a plan needs."""
    tiny_config(model_type, **over).save_pretrained(folder)
    return folder


def model_folder(folder: Path, model_type: str, **over) -> Path:
    """A whole model folder in HF format: config, random weights (seed 0), a tokenizer beside."""
    import torch
    from transformers import AutoModel

    from lorasweep.model.tiny_tokenizer import build_tiny_tokenizer

    config = tiny_config(model_type, **over)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    kind = "llama" if model_type in DECODERS else "t5" if model_type == "t5" else \
        "bert" if model_type in ("bert", "electra", "deberta-v2") else "roberta"
    build_tiny_tokenizer(kind).save_pretrained(folder)
    return folder
