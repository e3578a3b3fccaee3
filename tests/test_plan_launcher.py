"""hydra/launcher=plan: a sweep's runs counted and printed from configs, nothing trained."""
import re

from conftest import TINY_TOPICS, launch


def table_rows(stdout):
    return [line for line in stdout.splitlines() if re.match(r"lora\.r=\d+ lora\.proj=", line)]


def test_plan_prints_every_run_and_a_total(tmp_path):
    proc = launch(["-m", "lora.r=4,8,16", "lora.proj=qk,qkvo,v", "model=tiny-qwen3", "task=wordnet_mcq",
                   "budget.max_trainable=4000", "hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    assert len(rows) == 9
    # tiny-qwen3: 2 layers, hidden 64, q 64->64, k 64->32 (2 kv heads x 16): r x (128 + 96) x 2 for qk
    qk4 = next(r for r in rows if r.startswith("lora.r=4 lora.proj=qk "))
    assert "1,792" in qk4 and qk4.split()[-2:] == ["no", "no"]
    qkvo16 = next(r for r in rows if r.startswith("lora.r=16 lora.proj=qkvo "))
    assert "OVER" in qkvo16
    assert "total: 9 runs, 3 over budget, 0 already done, 0 with errors, 6 to run" in proc.stdout
    assert "every run: model=tiny-qwen3 task=wordnet_mcq budget.max_trainable=4000" in proc.stdout
    assert not (tmp_path / "results").exists()  # nothing ran


def test_plan_marks_done_runs_and_config_errors(tmp_path):
    assert launch(TINY_TOPICS + ["lora.r=4", "lora.proj=qk"], cwd=tmp_path).returncode == 0
    proc = launch(["-m", "lora.r=4", "lora.proj=qk,qkg"] + TINY_TOPICS + ["hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "total: 2 runs, 0 over budget, 1 already done, 1 with errors, 0 to run" in proc.stdout
    assert "'g' (MLP gate)" in proc.stdout


def test_share_of_the_model_is_peft_s_trainable_percentage(tmp_path):
    """The `% of all (peft)` column divides by every parameter, the adapter's included, as peft's
    print_trainable_parameters does: RoBERTa-base value-only r=22 prints 0.795% (peft: 0.7952%), not
    0.802% of the base alone; on tiny models, the same digits as peft's count of the built model."""
    import torch

    from lorasweep.model import methods
    from lorasweep.model.loading import build_on_meta
    from lorasweep.run.plan import plan_run
    from lorasweep.sweep.plan_table import _cells, plan_row

    from conftest import compose_config
    from test_params import four_label_task

    column = 3  # run, r, trainable, % of all (peft)
    roberta = compose_config(["model=roberta-base", "lora.proj=v", "lora.r=22", *four_label_task(tmp_path)])
    row = plan_row("roberta", roberta)
    assert (row.trainable, _cells(row)[column]) == (999_172, "0.795%")
    for overrides in (["method=lora", "lora.proj=qkvo"], ["method=dora", "lora.proj=v"], ["method=full"]):
        cfg = compose_config(TINY_TOPICS + overrides)
        plan = plan_run(cfg)
        skeleton = build_on_meta(plan.spec.model, plan.task.head, plan.task.num_labels)  # a fresh one: peft changes it
        with torch.device("meta"):
            built = methods.prepare(skeleton, plan.spec, plan.task.head, list(plan.targets))
        trainable, total = methods.count_parameters(built)
        assert _cells(plan_row("x", cfg))[column] == f"{100 * trainable / total:.3f}%", overrides
