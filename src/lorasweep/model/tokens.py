"""Token injection (the Qwen3 tutorial's option): new tokens in the vocabulary, their embedding rows
initialised random | average | zero, and optionally trained.

- planned_ids: the ids the new tokens will get, from the tokenizer alone (no weights), so the budget
  counts them before launch: trained rows cost len(ids) x hidden (peft's trainable_token_indices
  trains only those rows of the input embedding; a tied output layer shares them);
- inject: add them to a loaded tokenizer and model. The embedding grows only when the new ids do
  not fit (Qwen3 keeps spare rows; its matrix is never shrunk to the tokenizer). Initialisation is
  deterministic (random: seeded by train.seed), so a saved adapter reloads onto the same rows.
Untied output layers (rare among the models here) keep the new rows as initialised: only the input
embedding is trained.
"""
from __future__ import annotations

import torch
from torch import nn

def planned_ids(tokenizer, new: tuple[str, ...]) -> tuple[int, ...]:
    """Ids the tokens not yet in the vocabulary will get: add_tokens numbers them from len(tokenizer)."""
    return tuple(range(len(tokenizer), len(tokenizer) + len(_fresh(tokenizer, new))))


def _fresh(tokenizer, new: tuple[str, ...]) -> list[str]:
    """The tokens of `new` not yet in the vocabulary, once each, in order."""
    vocab = tokenizer.get_vocab()
    return [t for t in dict.fromkeys(new) if t not in vocab]


def vocab_size_for(config_vocab: int, ids: tuple[int, ...]) -> int:
    """Rows the embedding needs: the model's own, or more if the new ids run past them."""
    return max(config_vocab, max(ids) + 1) if ids else config_vocab


def inject(model: nn.Module, tokenizer, new: tuple[str, ...], init: str, seed: int) -> tuple[int, ...]:
    """Add `new` to tokenizer and model; initialise their rows; returns their ids."""
    ids = planned_ids(tokenizer, new)
    if not ids:
        return ids
    fresh = _fresh(tokenizer, new)
    tokenizer.add_tokens(fresh)
    if tuple(tokenizer.convert_tokens_to_ids(fresh)) != ids:
        raise RuntimeError(f"the tokenizer numbered {fresh} differently than planned ({ids})")
    needed = vocab_size_for(model.get_input_embeddings().weight.shape[0], ids)
    if needed > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(needed, mean_resizing=False)  # rows set below, not by transformers
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and out.weight is not layers[0].weight:  # untied: its rows are set too
        layers.append(out)
    with torch.no_grad():
        for layer in layers:
            w = layer.weight
            rows = torch.tensor(ids)
            if init == "zero":
                w[rows] = 0.0
            elif init == "average":
                w[rows] = w[:ids[0]].mean(0, keepdim=True).to(w.dtype)  # mean of the existing tokens
            else:
                w[rows] = (torch.randn(len(ids), w.shape[1], generator=generator) * std).to(w.dtype)
    return ids
