"""The plan cache (run/plan_cache.py): a model planned once on this machine is planned again, in a
new process, to the same plan without importing torch, transformers or peft, at any rank or budget;
a changed model file is a new plan; an unreadable entry or a cache that cannot be written change nothing but the time.
Each plan is made in a fresh process, as a sweep's driver makes it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import model_zoo as zoo
from conftest import ROOT

NEW = '["<widget>","<signal>","<orange>"]'
SHORT = ["task.max_train=16", "task.max_eval=6", "task.max_test=8"]
CASES = [
    ["model=tiny-llama", "task=wordnet_mcq", "lora.proj=all", *SHORT],
    ["model=tiny-gpt2", "task=wordnet_topics", "method=dora", *SHORT],  # Conv1D projections, a classification head
    ["model=tiny-bert", "task=wordnet_topics", "lora.r=auto", "budget.max_trainable=6000", *SHORT],
    ["model=tiny-qwen3", "task=wordnet_mcq", "method=full", f"tokens.new={NEW}", "+model.tiny.vocab_size=105", *SHORT],
    ["model=tiny-qwen3", "task=wordnet_mcq", "method=full", f"tokens.new={NEW}", "+model.tiny.vocab_size=128", *SHORT],
    ["model=tiny-t5", "task=nl2bash", "lora.proj=qv", *SHORT],  # completion on an encoder-decoder: seq2seq
]

# What a driver plans for each run, and which of the heavy libraries planning imported.
PLAN_SCRIPT = """
import json, sys
from dataclasses import asdict
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from lorasweep.run.plan import plan_run
from lorasweep.run.predict import task_lengths_of
from lorasweep.sweep.packs import why_alone

plans = []
for overrides in json.loads(sys.argv[1]):
    with initialize_config_dir(config_dir=sys.argv[2], version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    plan = plan_run(cfg)
    plans.append({"run_key": plan.spec.run_key, "r": plan.spec.lora.r, "head": plan.head,
                  "targets": list(plan.targets), "predicted": plan.predicted, "base_total": plan.base_total,
                  "token_ids": list(plan.token_ids), "shape": asdict(plan.shape),
                  "lengths": asdict(task_lengths_of(plan)), "covers": plan.covers, "alone": why_alone(cfg)})
print(json.dumps({"plans": plans, "imported": [m for m in ("torch", "transformers", "peft") if m in sys.modules]}))
"""


def plan_in_new_process(cases: list[list[str]], cache) -> dict:
    env = {**os.environ, "LORASWEEP_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, json.dumps(cases), str(ROOT / "conf")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_model_planned_before_plans_again_alike_without_transformers(tmp_path):
    cold = plan_in_new_process(CASES, tmp_path / "cache")
    assert cold["imported"] == ["torch", "transformers", "peft"]  # read off the skeletons
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "plans").iterdir())
    assert entries == ["facts"] * 6 + ["head"] + ["lengths"] * 6  # head: the packs' question of the completion run

    # a rank or a budget not planned before is arithmetic on what is kept: no new entry
    other_ranks = [CASES[0] + ["lora.r=32"], CASES[2][:3] + ["budget.max_trainable=20000", *SHORT]]
    warm = plan_in_new_process(CASES + other_ranks, tmp_path / "cache")
    assert warm["imported"] == []
    assert warm["plans"][:6] == cold["plans"]
    assert warm["plans"][6:] == plan_in_new_process(other_ranks, tmp_path / "empty-cache")["plans"]
    assert warm["plans"][6]["r"] == 32 and warm["plans"][7]["r"] > cold["plans"][2]["r"]  # 20,000 fits more than 6,000
    by_case = {tuple(c[:3]): p for c, p in zip(CASES, cold["plans"])}
    assert by_case["model=tiny-bert", "task=wordnet_topics", "lora.r=auto"]["r"] > 1  # the largest rank within 6,000
    qwen3 = [p for c, p in zip(CASES, cold["plans"]) if c[0] == "model=tiny-qwen3"]
    assert qwen3[0]["predicted"] != qwen3[1]["predicted"]  # vocabulary 105 grows by 3 rows; 128 has room
    assert cold["plans"][0]["covers"].startswith("14 modules: self_attn.q_proj")
    assert cold["plans"][5]["head"] == "seq2seq_lm"
    assert cold["plans"][5]["alone"] == "model=tiny-t5 trains completion as seq2seq (packs hold classification and " \
        "causal-LM runs)"


def test_an_edited_model_folder_is_planned_anew(tmp_path):
    folder = zoo.model_folder(tmp_path / "own", "llama")
    case = [["model=hf", f"model.id={folder}", "task=wordnet_mcq", "lora.proj=qkvogud", *SHORT]]
    before = plan_in_new_process(case, tmp_path / "cache")["plans"][0]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))

    after = plan_in_new_process(case, tmp_path / "cache")
    fresh = plan_in_new_process(case, tmp_path / "empty-cache")["plans"][0]
    assert after["imported"] == ["torch", "transformers", "peft"]  # read off the edited config, not the cache
    assert after["plans"][0] == fresh
    # g, u and d in 2 layers at r=8, each with 32 more features
    assert after["plans"][0]["predicted"] - before["predicted"] == 2 * 3 * 8 * 32


def test_an_unreadable_entry_or_an_unwritable_cache_costs_only_time(tmp_path):
    case = [CASES[0]]
    first = plan_in_new_process(case, tmp_path / "cache")
    for entry in (tmp_path / "cache" / "plans").iterdir():
        entry.write_text('{"head": "causal')  # cut short: a full disk, a copy interrupted
    again = plan_in_new_process(case, tmp_path / "cache")
    assert again["imported"] == ["torch", "transformers", "peft"]
    assert again["plans"] == first["plans"]
    assert plan_in_new_process(case, tmp_path / "cache")["imported"] == []  # mended: whole entries again

    (tmp_path / "not-a-folder").write_text("")
    assert plan_in_new_process(case, tmp_path / "not-a-folder")["plans"] == first["plans"]


def test_entries_unused_for_a_month_go_when_a_new_one_is_written(tmp_path):
    bert, llama = [CASES[2]], [CASES[0]]
    cache = tmp_path / "cache"
    first = plan_in_new_process(bert, cache)
    plans = cache / "plans"
    month_ago = time.time() - 31 * 86400
    bert_entries = sorted(plans.iterdir())
    stale, cut = plans / f"facts-{'0' * 32}.json", plans / ".lengths-abc123.json"  # older code's; a write cut short
    recent = plans / f"facts-{'1' * 32}.json"
    for path in (stale, cut, recent):
        path.write_text("{}")
    for path in (*bert_entries, stale, cut):
        os.utime(path, (month_ago, month_ago))

    again = plan_in_new_process(bert, cache)  # reads its entries, which marks them used; writes none
    assert again["imported"] == [] and again["plans"] == first["plans"]
    assert stale.exists() and cut.exists()  # only a process that writes an entry removes any
    assert all(p.stat().st_mtime > month_ago + 86400 for p in bert_entries)

    plan_in_new_process(llama, cache)  # a model not planned here yet: two new entries
    assert not stale.exists() and not cut.exists()
    assert set(bert_entries) | {recent} < set(plans.iterdir())
    assert len(list(plans.iterdir())) == len(bert_entries) + 1 + 2
