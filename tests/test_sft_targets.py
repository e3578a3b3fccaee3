"""What SFT trains on (README "Your own data": chat = SFT on the last assistant turn, completion =
causal-LM SFT on the completion, mcq = chat SFT on "B. b"): the labels of the batches that trl's
SFTTrainer, as a lorasweep run builds it, actually feeds the model.

The tiny decoder models have a character-level tokenizer with a ChatML template, so the expected
texts below are written out by hand from that template, not with lorasweep's own encoding.
"""
import json

import pytest
from transformers import Trainer

from lorasweep.model.tiny_tokenizer import build_tiny_tokenizer
from lorasweep.run.lifecycle import run_config

from conftest import compose_config

IGNORE = -100
SYSTEM = "You are terse."


def turn(role, content):
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


# chat: two exchanges, so an earlier assistant reply precedes the last one; every other row has a system message
CHAT = [{"messages": ([{"role": "system", "content": SYSTEM}] if i % 2 else [])
         + [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"first{i}"},
            {"role": "user", "content": f"Again {i}"}, {"role": "assistant", "content": f"last{i}"}]}
        for i in range(8)]
COMPLETION = [{"prompt": f"list files in dir{i}:", "completion": f" ls -la dir{i}"} for i in range(8)]
MCQ = [{"question": f"What is {i} plus one?", "options": [f"n{i + 1}", f"n{i + 2}", f"n{i + 3}"], "answer": i % 3,
        **({"system": SYSTEM} if i % 2 else {})} for i in range(8)]


def only(matches, prompt):
    assert len(matches) == 1, f"the untrained part is not one row's prompt: {prompt!r}"
    return matches[0]


def chat_target(prompt):
    """The row whose every turn but the last is `prompt`; trained: its last assistant turn."""
    for row in CHAT:
        *before, last = row["messages"]
        if prompt == "".join(turn(m["role"], m["content"]) for m in before) + "<|im_start|>assistant\n":
            return row, last["content"] + "<|im_end|>\n"
    raise AssertionError(f"the untrained part is not a row's conversation up to its last reply: {prompt!r}")


def completion_target(prompt):
    """The row whose prompt is `prompt`; trained: its completion and the eos token."""
    row = only([r for r in COMPLETION if r["prompt"] == prompt], prompt)
    return row, row["completion"] + "<|im_end|>"


def mcq_target(prompt):
    """The question's wording is lorasweep's (lettered options, an instruction): the prompt holds the
    system message, the question and every option; trained: "B. b" and the end of the turn."""
    row = only([r for r in MCQ if r["question"] in prompt], prompt)
    system = turn("system", SYSTEM) if "system" in row else ""
    assert prompt.startswith(system + "<|im_start|>user\n") and prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>") == (3 if system else 2)
    assert all(f"{letter}. {option}" in prompt for letter, option in zip("ABC", row["options"]))
    i = row["answer"]
    return row, f"{'ABC'[i]}. {row['options'][i]}<|im_end|>\n"


def mcq_option_target(prompt):
    """task.answer=option: the same prompt; trained: the option's text alone and the end of the turn."""
    row, lettered = mcq_target(prompt)
    return row, lettered[len("B. "):]


@pytest.fixture
def fed(monkeypatch):
    """Every batch the Trainer trains on, as it reaches training_step (collated, before the forward)."""
    batches = []
    original = Trainer.training_step

    def capture(self, model, inputs, *args, **kwargs):
        batches.append({k: v.detach().clone() for k, v in inputs.items()
                        if k in ("input_ids", "labels", "attention_mask")})
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", capture)
    return batches


@pytest.mark.parametrize("fmt,rows,model,target", [
    ("chat", CHAT, "tiny-qwen3", chat_target),
    ("completion", COMPLETION, "tiny-llama", completion_target),
    ("mcq", MCQ, "tiny-qwen3", mcq_target),
    ("mcq task.answer=option", MCQ, "tiny-qwen3", mcq_option_target),
], ids=["chat", "completion", "mcq", "mcq-option"])
def test_sft_labels_are_exactly_the_completion(tmp_path, fed, fmt, rows, model, target):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # one epoch in two batches of four: every row is trained on once
    fmt, *more = fmt.split()
    cfg = compose_config(["task=jsonl", f"task.format={fmt}", *more, f"model={model}", f"task.train={path}",
                          f"task.eval={path}", f"task.test={path}", "task.max_eval=2", "task.max_test=2",
                          "train.max_steps=2", "train.eval_steps=2", "train.batch_size=4",
                          f"results_dir={tmp_path / 'results'}"])
    assert run_config(cfg)["status"] == "done"
    assert len(fed) == 2
    tok = build_tiny_tokenizer("qwen3")  # the decoder families' tokenizer: one token per character
    seen = []
    for batch in fed:
        for i in range(len(batch["input_ids"])):
            real = batch["attention_mask"][i].bool()
            ids, labels = batch["input_ids"][i][real].tolist(), batch["labels"][i][real].tolist()
            assert (batch["labels"][i][~real] == IGNORE).all()  # padding is never trained
            trained = [k for k, label in enumerate(labels) if label != IGNORE]
            assert trained, f"nothing to learn in {tok.decode(ids)!r}"
            start = trained[0]
            # one block at the end of the sequence, each label the token itself (the model shifts them)
            assert trained == list(range(start, len(ids))) and labels[start:] == ids[start:]
            row, completion = target(tok.decode(ids[:start]))
            assert tok.decode(ids[start:]) == completion
            seen.append(rows.index(row))
    assert sorted(seen) == list(range(len(rows)))
