"""The private APIs lorasweep.compat wraps, checked against the installed libraries.

When an upgrade of Hydra, Optuna, submitit, peft or trl moves one of them, this file fails first and says
which, instead of a sweep failing halfway (tests/test_sweep_compose.py checks the Hydra composition
end to end; the sweep tests use all of them for real).
"""
from __future__ import annotations

import optuna
import pytest
import submitit
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lorasweep import compat


def test_hydra_applies_value_overrides_and_formats_override_dirname():
    node = OmegaConf.create({"lora": {"r": 4, "proj": "qk"}, "train": {"lr": 0.1}})
    overrides = OverridesParser.create().parse_overrides(["lora.r=16", "train.lr=3e-4"])
    compat.apply_overrides(overrides, node)
    assert node.lora.r == 16 and node.train.lr == 3e-4 and node.lora.proj == "qk"
    assert compat.overrides_dirname(overrides=overrides, exclude_keys=[], item_sep=",", kv_sep="=") == \
        "lora.r=16,train.lr=3e-4"


def test_hydra_basic_sweeper_has_the_validation_pass_the_grid_sweeper_skips():
    sweeper = compat.basic_sweeper()
    assert sweeper.__name__ == "BasicSweeper"
    assert callable(getattr(sweeper, "validate_batch_is_legal", None)), \
        "Hydra's BasicSweeper no longer has validate_batch_is_legal: see src/hydra_plugins/lorasweep_grid"


def test_optuna_trial_reopened_from_its_storage_id_reports_to_the_same_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="compat")
    asked = study.ask()
    asked.suggest_int("x", 1, 3)
    storage_id = compat.trial_id(asked)
    assert isinstance(storage_id, int)
    # another process opens the study from storage and reports through the same trial
    other = compat.reopen_trial(optuna.load_study(study_name="compat", storage=storage), storage_id)
    other.report(0.5, step=2)
    assert study.trials[0].intermediate_values == {2: 0.5} and study.trials[0].number == asked.number
    assert compat.trial_id(study.trials[0]) == storage_id  # FrozenTrial too


# the job unpickles its function in a fresh process: a builtin, not a function of this test module
@pytest.mark.parametrize("argument, outcome, check", [
    ("42", "success", lambda value: value == 42),
    ("forty-two", "error", lambda value: "invalid literal for int()" in value.splitlines()[-1]),
])
def test_submitit_job_outcome_is_success_with_the_result_or_error_with_the_traceback(tmp_path, argument,
                                                                                     outcome, check):
    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(timeout_min=2)
    job = executor.submit(int, argument)
    job.wait()
    got, value = compat.job_outcome(job)
    assert got == outcome and check(value), (got, value)


def test_peft_casts_a_lora_layers_input_to_the_adapters_dtype_unless_casting_is_off():
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"], r=2))
    layer = model.base_model.model[0]
    x = torch.ones(2, 4, dtype=torch.float64)
    assert compat.cast_lora_input(layer, x, torch.float32).dtype == torch.float32
    same = torch.ones(2, 4)
    assert compat.cast_lora_input(layer, same, torch.float32) is same
    with disable_input_dtype_casting(model):  # the user's switch, which a pack's forward honours as peft's does
        assert compat.cast_lora_input(layer, x, torch.float32) is x


def test_peft_dora_forward_compiles_whole_with_its_base_weight_made_traceable():
    """A compiled pack's DoRA layers (run/pack_compile.py): peft's DoRA forward, through
    dequantize_module_weight, traced in one graph (fullgraph raises at a graph break), as eager computes it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                           LoraConfig(target_modules=["0"], r=2, use_dora=True, init_lora_weights=False))
    x = torch.randn(3, 8)
    compat.traceable_dora_weight()
    torch._dynamo.reset()
    try:
        assert torch.equal(torch.compile(model, fullgraph=True, backend="eager")(x), model(x))
    finally:
        torch._dynamo.reset()


def test_peft_moves_transformers_4_expert_names_onto_the_experts():
    """The names compat reads from peft's private table are the ones its conversion rewrites: a qwen3_moe
    target ending in .gate_proj becomes the experts' gate_up_proj parameter; llama keeps its targets."""
    from peft import LoraConfig
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    assert {"gate_proj", "up_proj", "down_proj"} <= compat.peft_moe_renamed("qwen3_moe")
    assert {"w1", "w2", "w3"} <= compat.peft_moe_renamed("mixtral")
    assert compat.peft_moe_renamed("llama") == compat.peft_moe_renamed("qwen3") == frozenset()

    class Qwen3Moe(torch.nn.Module):
        config = type("Config", (), {"model_type": "qwen3_moe"})()

    dense = [f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]  # a dense MLP layer
    config = LoraConfig(target_modules=[*dense, "model.layers.0.self_attn.q_proj"])
    convert_peft_config_for_transformers(config, Qwen3Moe(), None)
    assert set(config.target_modules) == {"model.layers.0.self_attn.q_proj"}
    assert set(config.target_parameters) == {"gate_up_proj", "down_proj"}  # every layer's experts'
    assert not set(compat.peft_moe_renamed("qwen3_moe")) & {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_trl_sft_trainer_logs_the_metrics_and_token_count_compat_adds_to(tmp_path):
    """trl's own loss fills the fields run/loop.py's kept-rows loss fills through compat, and its log
    reports them: the same entropy, mean_token_accuracy and num_tokens lines either way."""
    from lorasweep.model import loading, methods
    from lorasweep.run.loop import sft_trainer, trainer_arguments
    from lorasweep.run.plan import plan_run
    from lorasweep.tasks import task as tasks

    from conftest import TINY_MCQ, compose_config

    plan = plan_run(compose_config(TINY_MCQ))
    spec, task = plan.spec, plan.task
    model, tok, _ = loading.load_with_notes(spec.model, plan.head, task.num_labels)
    model = methods.prepare(model, spec, plan.head, list(plan.targets))
    trainer = sft_trainer(model, tok, tasks.training_data(task, tok, spec.train, plan.head), spec.train,
                          trainer_arguments(spec.train, tmp_path))
    trainer.full_logits = True  # trl's own compute_loss
    batch = next(iter(trainer.get_train_dataloader()))
    tokens = int(batch["attention_mask"].sum())
    model.train()
    trainer.compute_loss(model, dict(batch))
    metrics = compat.sft_train_metrics(trainer)
    assert {"entropy", "mean_token_accuracy"} <= metrics.keys() and metrics["num_tokens"] == [tokens]
    assert compat.count_sft_tokens(trainer, 10) == tokens + 10
    metrics["num_tokens"] = [tokens + 10]
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["num_tokens"] == tokens + 10
    assert not compat.sft_train_metrics(trainer)  # cleared at each log
