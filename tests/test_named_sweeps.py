"""Named sweeps in sweeps/: each composes, plans to its number of runs, and runs as a real multirun."""
import importlib.util
import json
import re

import pytest
import torch

from conftest import ROOT, TINY_TOPICS, launch

SWEEPS = {"rank_ablation": 5, "projection_ablation": 7, "method_comparison": 4, "alpha_ablation": 9,
          "dropout_lr": 9, "seeds": 3}


# The tutorials' studies on their datasets (task=hf) or hub models: planned below against local stand-ins.
TUTORIAL_SWEEPS = {"agnews_1m", "imdb_lora_vs_full", "qwen3_mcq_lora_dora", "t5_nl2bash"}


def test_every_named_sweep_is_tested_and_starts_with_its_command():
    assert {p.stem for p in (ROOT / "sweeps").glob("*.yaml")} == set(SWEEPS) | {"budget_1m"} | TUTORIAL_SWEEPS
    for name in [*SWEEPS, "budget_1m", *TUTORIAL_SWEEPS]:
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text().splitlines()
        assert text[0] == "# @package _global_" and text[1].startswith(f"# python launch.py -m +sweep={name}")


@pytest.mark.parametrize("name,runs", SWEEPS.items())
def test_named_sweep_plans_its_runs_on_the_embedded_default(tmp_path, name, runs):
    proc = launch(["-m", f"+sweep={name}", "hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"total: {runs} runs: {runs} not started; {runs} to run" in proc.stdout


def test_seeds_and_alpha_sweeps_run_for_real(tmp_path):
    proc = launch(["-m", "+sweep=alpha_ablation", "lora.r=4", "train.seed=0,1"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 6 runs: 6 done" in proc.stderr  # the command line narrows and extends the sweep
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "results").glob("*/result.json")]
    cells = sorted((c["lora"]["alpha"], c["train"]["seed"]) for c in configs)
    assert cells == [(2.0, 0), (2.0, 1), (4.0, 0), (4.0, 1), (8.0, 0), (8.0, 1)]  # r/2, r, 2r at r=4


def test_budget_1m_is_an_optuna_search_under_the_budget(tmp_path):
    import optuna

    proc = launch(["-m", "+sweep=budget_1m", "hydra.sweeper.n_trials=3", "budget.max_trainable=3000",
                   f"results_dir={tmp_path / 'results'}"] + TINY_TOPICS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}")
    assert summary.n_trials == 3
    results = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")]
    assert all(r["budget"]["max_trainable"] == 3000 for r in results)  # the command line's budget wins
    assert all(r["params"]["trainable"] <= 3000 for r in results if r["status"] == "done")


def _stand_in(folder, splits: dict[str, dict], label_names=None):
    """A local save_to_disk dataset with the hub dataset's columns (no hub here)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=label_names)}) if label_names else None
    DatasetDict({s: Dataset.from_dict(c, features=features) for s, c in splits.items()}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("name,stand_in,rows", [
    # value-only at the largest rank within 1M: the tutorial's r=22, alpha=44, 999,172 trainable
    ("agnews_1m", "ag_news", [r"lora\.proj=v +22 \(auto\) +999,172 ", r"lora\.proj=qkvoud +2 \(auto\) +925,444 ",
                              r"total: 6 runs: 6 not started; 6 to run"]),
    # c_attn at r=8: the tutorial's 294,912, plus the 2-class head's 1,536
    ("imdb_lora_vs_full", "imdb", [r"method=lora +8 +296,448 ", r"method=full +- +124,441,344 ",
                                   r"total: 2 runs: 2 not started; 2 to run"]),
    ("qwen3_mcq_lora_dora", "mcq", [r"method=lora +8 +2,293,760 ", r"method=dora +8 +2,437,120 ",
                                    r"total: 2 runs: 2 not started; 2 to run"]),
])
def test_tutorial_sweeps_plan_against_a_local_stand_in(tmp_path, name, stand_in, rows):
    import re

    news = {"text": [f"item {i}" for i in range(40)], "label": [i % 4 for i in range(40)]}
    reviews = {"text": [f"review {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    mcq = {"question": [f"{i} + 1?" for i in range(8)], "options": [[str(i + 1), str(i + 2)] for i in range(8)],
           "answer": [0] * 8}
    folder = {"ag_news": lambda f: _stand_in(f, {"train": news, "test": news},
                                             ["World", "Sports", "Business", "Sci/Tech"]),
              "imdb": lambda f: _stand_in(f, {"train": reviews, "test": reviews,  # unsupervised: labels -1
                                              "unsupervised": {**reviews, "label": [-1] * 40}}, ["neg", "pos"]),
              "mcq": lambda f: _stand_in(f, {"train": mcq, "validation": mcq, "test": mcq})}[stand_in](tmp_path / stand_in)
    proc = launch(["-m", f"+sweep={name}", "hydra/launcher=plan", f"task.dataset={folder}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in rows:
        assert re.search(row, proc.stdout), proc.stdout


# google-t5/t5-base's config.json (the hub's, feed_forward_proj spelled out): all a plan reads
T5_BASE = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 768, "d_ff": 3072,
           "d_kv": 64, "num_heads": 12, "num_layers": 12, "vocab_size": 32128, "feed_forward_proj": "relu",
           "n_positions": 512, "relative_attention_num_buckets": 32, "dropout_rate": 0.1,
           "layer_norm_epsilon": 1e-06, "initializer_factor": 1.0, "is_encoder_decoder": True,
           "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "output_past": True}


def test_t5_nl2bash_plans_lora_and_says_what_qlora8_lacks(tmp_path):
    """The T5 tutorial's comparison against a stand-in t5-base folder (its config.json alone): LoRA on
    q, k, v, o at r=16 adapts 12 encoder layers x 4 (self-attention) and 12 decoder layers x 8 (self and
    cross attention) = 144 projections of 768 -> 768 (12 heads x d_kv 64), each 16 x (768 + 768) =
    24,576: 3,538,944 trainable, 1.563% of all that peft counts (t5-base's 222,903,552 and the adapters).
    qlora8 needs CUDA and bitsandbytes: where they are, the same count (the 8-bit base trains the same
    adapters); where not, an error row that says what is missing, and the LoRA run still to run."""
    folder = tmp_path / "t5-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(T5_BASE))
    proc = launch(["-m", "+sweep=t5_nl2bash", "hydra/launcher=plan", f"model.id={folder}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"method=lora +16 +3,538,944 +1\.563% ", proc.stdout), proc.stdout
    missing = [w for w, lacking in (("a CUDA GPU \\(this machine has none\\)", not torch.cuda.is_available()),
               ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes") is None)) if lacking]
    if not missing:
        assert re.search(r"method=qlora8 +16 +3,538,944 ", proc.stdout), proc.stdout
        assert "total: 2 runs: 2 not started; 2 to run" in proc.stdout
        return
    assert re.search(r"method=qlora8 +error ", proc.stdout), proc.stdout
    assert re.search(r"error: method=qlora8: method=qlora8 loads the base model quantized with bitsandbytes and "
                     rf"needs {missing[0]}.*; use method=lora here", proc.stdout), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "total: 2 runs: 1 not started, 1 with errors; 1 to run" in proc.stdout
