"""launch.py as a user types it: a tiny run, and bad input answered with one clear line, fast."""
import json
import os
import signal

import pytest

from conftest import TINY_TOPICS, Sweep, launch


def test_launch_runs_and_prints_a_summary(tmp_path):
    proc = launch(TINY_TOPICS + ["method=lora", "lora.r=4", "lora.proj=vq"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_file] = list((tmp_path / "results").glob("*/result.json"))
    result = json.loads(result_file.read_text())
    assert result["config"]["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.05, "proj": "qv"}
    summary = proc.stderr.strip().splitlines()[-1]
    acc, se = result["metrics"]["test"]["accuracy"], result["metrics"]["test"]["accuracy_se"]
    assert f"test accuracy {acc:.3f} ± {se:.3f}" in summary
    assert f"{result['params']['trainable']:,} trainable params" in summary
    assert "train step" in proc.stderr and "eval  step" in proc.stderr  # progress was shown
    # the evaluation before any update says so (the Trainer's step count is 0/0 before training begins)
    first_eval = next(line for line in proc.stderr.splitlines() if line.startswith("  eval  "))
    assert first_eval.startswith("  eval  before training  accuracy ") and "0/0" not in proc.stderr


@pytest.mark.real_model
def test_a_packaged_model_says_its_new_head_once_in_plain_words(tmp_path):
    """MiniLM ships without a classification head: transformers' load report (a table, with terminal
    colour codes even in a log file) is replaced by one line that says what a researcher needs."""
    proc = launch(["model=minilm", "task=wordnet_topics", "train.max_steps=2", "train.eval_steps=2",
                   "task.max_train=16", "task.max_eval=8", "task.max_test=8", "train.batch_size=8"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOAD REPORT" not in proc.stderr and "MISSING" not in proc.stderr and "\x1b" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "head" in line]
    # 384 x 26 weights + 26 biases; the seed is train.seed's
    assert line == ("minilm-wordnet_topics-lora-qkvo-r8: the classification head (26 labels, 10,010 parameters) "
                    "is new: it starts at random (seed 0) and is trained with the adapters")


def test_a_log_file_gets_no_terminal_colour_codes():
    """What a run prints into its log.txt (runs sharing a terminal) goes through PlainText."""
    import io

    from lorasweep.console import PlainText

    log = io.StringIO()
    plain = PlainText(log)
    print("\x1b[1mBertForSequenceClassification\x1b[0m \x1b[31mMISSING\x1b[0m ± 0.1", file=plain)
    assert log.getvalue() == "BertForSequenceClassification MISSING ± 0.1\n" and not plain.isatty()


@pytest.mark.parametrize("args,needles", [
    (["lora.proj=qkx"], ["lora.proj='qkx'", "'x'", "q k v o g u d"]),
    (["model=minilm", "lora.proj=qkvg"], ["'g' (MLP gate)", "valid codes for bert: q k v o u d"]),
    (["lora.r=0"], ["lora.r=0", "positive integer"]),
    (["lora.dropout=1.5"], ["lora.dropout=1.5", "[0, 1)"]),
    (["train.lr=0"], ["train.lr=0", "positive number"]),
    (["model=qwen3-0.6b"], ["qwen3-0.6b", "Qwen/Qwen3-0.6B", "minilm", "smollm2-135m"]),
])
def test_bad_input_fails_fast_with_one_clear_message(tmp_path, args, needles):
    proc = launch(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    assert "trainable of" not in proc.stderr  # stopped before a model was built (no timed assertion: CI load varies)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("group,value", [("model", "nope"), ("task", "nope")])
def test_unknown_group_option_lists_the_available_ones(tmp_path, group, value):
    proc = launch([f"{group}={value}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert f"Could not find '{group}/{value}'" in proc.stderr
    assert ("minilm" if group == "model" else "wordnet_topics") in proc.stderr


@pytest.mark.parametrize("args,said", [
    (["lora.r=-1"], "error: lora.r=-1 is invalid: a positive integer rank"),
    (["train.compile=maybe"], "error: train.compile='maybe' is invalid"),
    (["tracking.backend=nope"], "error: tracking.backend='nope' is invalid"),
    (["budget.max_trainable=-3"], "error: budget.max_trainable=-3 is invalid"),
    (["train.seed=-1"], "error: train.seed=-1 is invalid: a whole number from 0 to 2**32 - 1"),
    (["train.step_sleep_s=abc"], "error: train.step_sleep_s='abc' is invalid: the seconds to pause after each "
                                 "training step"),
    (["train.save_steps=abc"], "error: train.save_steps='abc' is invalid: a whole number of steps >= 0"),
    (["train.pack_product=fast"], "error: train.pack_product='fast' is invalid: how a pack applies its runs' "
                                  "adapters, one of auto, grouped, batched, loop"),
    # task=hf: what needs no data is refused before the dataset (or torch) is opened
    (["task=hf"], "error: task.dataset='???' is invalid: a hub id (task.dataset=ag_news) or a local folder"),
    (["task=hf", "task.dataset=ag_news", "task.format=qa"], "error: task.format='qa' is invalid: choose one of"),
    (["task=hf", "task.dataset=ag_news", "+task.columns.txt=title"],
     "error: task.columns.txt='title' is invalid: classification has no field 'txt'"),
    (["task=hf", "task.dataset=ag_news", "task.split.train='train[:90'"],
     "error: task.split.train='train[:90' is invalid: a split name, sliced as the datasets library spells it"),
    # a sweep's settings without -m: Hydra would make one run of the rest (it trained)
    (["hydra/launcher=plan", "lora.r=4"], "error: hydra/launcher=plan lists the runs of a sweep: add -m"),
    (["+sweep=rank_ablation"], "error: hydra.sweeper.params (lora.r=2,4,8,16,32; +sweep=NAME sets them) sweep "
                               "only with -m: add -m"),
    (["-m", "lora.r=4,8", "hydra.launcher.pack=1.5"], "sweep: hydra.launcher.pack=1.5 is invalid"),
    (["-m", "lora.r=4,8", "hydra.launcher.retries=-1"], "sweep: hydra.launcher.retries=-1 is invalid"),
    (["-m", "hydra/sweeper=optuna", "hydra.sweeper.max_failure_rate=1.5", "lora.r=choice(4,8)"],
     "sweep: hydra.sweeper.max_failure_rate=1.5 is invalid"),
])
def test_a_mistake_in_a_value_is_said_before_torch_and_transformers_load(tmp_path, args, said):
    """Importing torch, transformers and peft takes seconds (8 on a loaded 2-core machine): a typo is
    answered before that. The libraries are replaced here by modules that fail when imported."""
    shadow = tmp_path / "no_libraries"
    shadow.mkdir()
    for name in ("torch", "transformers", "peft", "trl", "datasets"):
        (shadow / f"{name}.py").write_text(f"raise ImportError('{name} was imported before the check')\n")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))  # a worktree's src/ too
    proc = launch(args, cwd=tmp_path, env={"PYTHONPATH": path})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert said in proc.stderr and "was imported" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_ctrl_c_stops_a_run_in_one_line_and_the_same_command_trains_it(tmp_path):
    args = [*[a for a in TINY_TOPICS if not a.startswith(("train.max_steps=", "train.eval_steps="))],
            "train.max_steps=20", "train.eval_steps=10", "train.step_sleep_s=0.2"]
    with Sweep(args, tmp_path) as run:  # started as from a terminal: Ctrl-C signals its process group
        run.wait_for_line(r"train step ")
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait()
    assert code == 130, run.output[-3000:]
    assert run.output.splitlines()[-1] == "interrupted: the run wrote no result; run the same command again to train it"
    assert "Traceback" not in run.output and not list(tmp_path.glob("results/*/result.json"))
    proc = launch(args[:-1], cwd=tmp_path)  # its claim was released: nothing waits for a trainer gone
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = [json.loads(f.read_text()) for f in tmp_path.glob("results/*/result.json")]
    assert result["status"] == "done" and result["timing"]["steps"] == 20
