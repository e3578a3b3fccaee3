"""A character-level tokenizer built in memory, for tiny random test models (no files, no hub).

Every printable ASCII character is one token; anything else maps to the unknown token. Two flavours:
- decoder families (llama, qwen3, gpt2) get ChatML specials and a ChatML chat template of the same
  shape as SmolLM2's, so `apply_chat_template` and trl's SFT work as on the real models;
- encoder families (bert, roberta) get [PAD] [UNK] [CLS] [SEP] [MASK] and add [CLS] ... [SEP];
- t5 gets <pad> </s> <unk> and appends </s>, as T5's own tokenizer does.
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

DECODER_FAMILIES = ("llama", "qwen3", "gpt2")
ENCODER_FAMILIES = ("bert", "roberta")
SEQ2SEQ_FAMILIES = ("t5",)

# ChatML, as SmolLM2-Instruct and Qwen3 use, without SmolLM2's default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Specials come first so their ids are small and stable: 0 is always the pad token.
_SPECIALS = {
    "decoder": ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
    "encoder": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "seq2seq": ["<pad>", "</s>", "<unk>"],
}


def _kind(family: str) -> str:
    if family in DECODER_FAMILIES:
        return "decoder"
    if family in ENCODER_FAMILIES:
        return "encoder"
    if family in SEQ2SEQ_FAMILIES:
        return "seq2seq"
    raise ValueError(f"no tiny tokenizer for family {family!r}: valid are "
                     f"{DECODER_FAMILIES + ENCODER_FAMILIES + SEQ2SEQ_FAMILIES}")


def build_tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer for `family`; len(tokenizer) is about 105."""
    kind = _kind(family)
    specials = _SPECIALS[kind]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    unk = next(s for s in specials if "unk" in s.lower())
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")  # one char, one token
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    elif kind == "seq2seq":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", vocab["</s>"])])

    if kind == "decoder":
        kwargs = dict(pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>",
                      unk_token="<unk>", chat_template=CHATML_TEMPLATE,
                      additional_special_tokens=["<|endoftext|>"])
    elif kind == "encoder":
        kwargs = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]")
    else:
        kwargs = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    # token_type_ids only for BERT; decoder models' forward() does not accept them.
    input_names = (["input_ids", "token_type_ids", "attention_mask"] if family == "bert"
                   else ["input_ids", "attention_mask"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=input_names,
                                   padding_side="right", **kwargs)
    return fast
