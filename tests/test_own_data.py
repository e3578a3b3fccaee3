"""Your own data (task=jsonl): every format from JSONL and CSV, several test sets, errors that name
the file, the line and the field; tiny end-to-end runs through the public interface."""
import csv
import json

import pytest
import torch

from lorasweep.config.spec import ModelSpec
from lorasweep.errors import ConfigError, DataError
from lorasweep.model import loading
from lorasweep.run.lifecycle import run_config
from lorasweep.tasks import generation
from lorasweep.tasks.formats import load_chat, load_classification, load_completion, load_mcq

from conftest import compose_config, launch

CLS = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
       for i in range(12)]
MCQ = [{"question": f"What is {i} + 1?", "options": [str(i + 1), str(i + 2), str(i + 3)], "answer": 0,
        **({"system": "You are a calculator."} if i % 2 else {})} for i in range(10)]
CHAT = [{"messages": ([{"role": "system", "content": "Be terse."}] if i % 2 else [])
         + [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]} for i in range(10)]
COMPLETION = [{"prompt": f"list files in dir{i}:", "completion": f" ls dir{i}"} for i in range(10)]
SHORT = ["train.max_steps=2", "train.eval_steps=2", "train.batch_size=4", "train.eval_batch_size=4"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def own(tmp_path, fmt, rows, model, extra=()):
    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", rows) for s in ("train", "eval", "test")}
    return ["task=jsonl", f"task.format={fmt}", f"model={model}", *SHORT,
            *(f"task.{s}={p}" for s, p in files.items()), f"results_dir={tmp_path / 'results'}", *extra]


# --- loaders: CSV reads as its JSONL twin --------------------------------------------------------

def test_csv_rows_equal_jsonl_rows_for_every_format(tmp_path):
    cls = write_csv(tmp_path / "c.csv", CLS, ["text", "label"])
    assert load_classification(cls) == CLS
    mcq_rows = [{"question": r["question"], "options": json.dumps(r["options"]), "answer": "A"} for r in MCQ]
    mcq = write_csv(tmp_path / "m.csv", mcq_rows, ["question", "options", "answer"])
    assert load_mcq(mcq) == [{k: r[k] for k in ("question", "options", "answer")} for r in MCQ]
    chat_rows = [{"system": r["messages"][0]["content"] if len(r["messages"]) == 3 else "",
                  "user": r["messages"][-2]["content"], "assistant": r["messages"][-1]["content"]} for r in CHAT]
    chat = write_csv(tmp_path / "chat.csv", chat_rows, ["system", "user", "assistant"])
    assert load_chat(chat) == CHAT  # an empty system cell means no system message
    comp = write_csv(tmp_path / "p.csv", COMPLETION, ["prompt", "completion"])
    assert load_completion(comp) == COMPLETION


@pytest.mark.parametrize("loader,text,message", [
    (load_classification, 'text,label\n"a\nmultiline review",pos\nshort,\n', r"d\.csv:4: missing field 'label'"),
    (load_mcq, 'question,options,answer\nq,"[""a"", ""b""]",2\n', r"d\.csv:2: field 'answer': 2 is out of range"),
    (load_mcq, 'question,options,answer\nq,a|b,0\n', r"d\.csv:2: field 'options': expected a JSON list"),
    (load_mcq, 'question,options,answer\nq,"[""a"", ""b""]",maybe\n', r"d\.csv:2: field 'answer': expected an option"),
    (load_chat, 'user,reply\nhi,there\n', r"d\.csv:2: missing field 'assistant'"),
    (load_completion, 'prompt,completion,x\nls,-la,1,2\n', r"d\.csv:2: more cells than the header's 3"),
])
def test_csv_errors_name_file_line_and_field(tmp_path, loader, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        loader(path)


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "must end with the assistant's reply"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, "role 'bot'"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "message 0 has no string 'content'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "x"}]}, "a system message must come first"),
    ({"msgs": []}, "missing field 'messages'"),
])
def test_chat_errors_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "chat.jsonl", [CHAT[0], row])
    with pytest.raises(DataError, match=rf"chat\.jsonl:2: .*{message}"):
        load_chat(path)


def test_completion_missing_field_names_line(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", COMPLETION[:3] + [{"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=r"gen\.jsonl:4: missing field 'completion'"):
        load_completion(path)


def test_unknown_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"task.format='qa' is invalid: choose one of classification, mcq, chat, completion"):
        run_config(compose_config(own(tmp_path, "qa", CLS, "tiny-bert")))


def test_cli_reports_a_bad_row_before_loading(tmp_path):
    args = own(tmp_path, "completion", COMPLETION, "tiny-gpt2")
    write_jsonl(tmp_path / "eval.jsonl", COMPLETION[:2] + [{"prompt": "p", "completion": 3}])
    proc = launch(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'eval.jsonl'}:3: field 'completion': expected str, got int" in proc.stderr
    assert not (tmp_path / "results").exists()


# --- end to end: each format trains and reports its metrics ---------------------------------------

def test_classification_from_own_csv(tmp_path):
    files = [f"task.{s}={write_csv(tmp_path / f'{s}.csv', CLS, ['text', 'label'])}" for s in ("train", "eval", "test")]
    cfg = compose_config(["task=jsonl", "task.format=classification", "model=tiny-bert", *SHORT, *files,
                          f"results_dir={tmp_path / 'results'}"])
    result = run_config(cfg)
    test = result["metrics"]["test"]
    assert result["status"] == "done" and test["n"] == 12 and set(test) == {"accuracy", "accuracy_se", "n", "loss"}
    assert result["params"]["predicted"] == result["params"]["trainable"]
    assert result["objective"] == {"name": "test.accuracy", "value": test["accuracy"], "direction": "maximize"}


def test_mcq_with_two_test_sets_each_with_its_se(tmp_path):
    con = write_jsonl(tmp_path / "con.jsonl", MCQ[:7])
    result = run_config(compose_config(own(tmp_path, "mcq", MCQ, "tiny-qwen3", [f"+task.tests.mcq_con={con}"])))
    test, con_m = result["metrics"]["test"], result["metrics"]["tests"]["mcq_con"]
    assert test["n"] == 10 and con_m["n"] == 7 and set(result["metrics"]["tests"]) == {"mcq_con"}
    for m in (test, con_m):
        assert m["accuracy_se"] == pytest.approx((m["accuracy"] * (1 - m["accuracy"]) / m["n"]) ** 0.5)
    assert result["objective"]["name"] == "test.accuracy" and result["objective"]["value"] == test["accuracy"]
    assert result["config"]["task"]["tests"] == {"mcq_con": str(con)}


@pytest.mark.parametrize("fmt,rows,model", [("chat", CHAT, "tiny-qwen3"), ("completion", COMPLETION, "tiny-gpt2"),
                                            ("completion", COMPLETION, "tiny-llama"),
                                            ("completion", COMPLETION, "tiny-t5")])  # an encoder-decoder: seq2seq
def test_generation_formats_report_loss_token_accuracy_and_exact_match(tmp_path, fmt, rows, model):
    result = run_config(compose_config(own(tmp_path, fmt, rows, model)))
    test = result["metrics"]["test"]
    assert result["status"] == "done" and test["n"] == 10
    assert set(test) == {"loss", "loss_se", "token_accuracy", "token_accuracy_se", "exact_match",
                         "exact_match_se", "n", "n_tokens"}
    assert 0 <= test["token_accuracy"] <= 1 and 0 <= test["exact_match"] <= 1 and test["loss"] > 0
    assert test["token_accuracy_se"] == pytest.approx(
        (test["token_accuracy"] * (1 - test["token_accuracy"]) / test["n_tokens"]) ** 0.5)
    assert result["objective"] == {"name": "test.token_accuracy", "value": test["token_accuracy"],
                                   "direction": "maximize"}
    assert [c["step"] for c in result["curve"]] == [0, 2] and "token_accuracy" in result["curve"][-1]


def test_completion_tokens_are_the_reference_plus_eos():
    tok = loading.load_model(ModelSpec(name="tiny-gpt2", family="gpt2", source="tiny"), "causal_lm")[1]
    prompt, completion = generation.encode(tok, COMPLETION[3])
    assert tok.decode(prompt) == "list files in dir3:" and completion[-1] == tok.eos_token_id
    assert tok.decode(completion[:-1]) == " ls dir3"
    prompt, completion = generation.encode(tok, CHAT[1])
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n") and tok.decode(completion) == "1<|im_end|>\n"


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_exact_match_is_one_when_the_references_are_the_models_own_greedy_output(family):
    """Batched, left-padded generation equals generating each prompt alone."""
    model, tok = loading.load_model(ModelSpec(name=f"tiny-{family}", family=family, source="tiny"), "causal_lm")
    model.eval()
    rows = []
    for i, prompt in enumerate(["ls", "find all python files here", "count lines"]):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        rows.append({"prompt": prompt, "completion": tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)})
    metrics = generation.evaluate(model, tok, rows, batch_size=3, max_length=64, max_new_tokens=6)
    assert metrics["exact_match"] == 1.0 and metrics["n"] == 3


def test_unset_paths_say_they_are_required():
    from lorasweep.run.plan import plan_run
    with pytest.raises(ConfigError, match=r"task.train='\?\?\?' is invalid: a path to a JSONL or CSV file is required"):
        plan_run(compose_config(["task=jsonl", "model=tiny-bert"]))
