"""The SFT training loss from the LM head's kept rows (run/lm_head.py) is the full-logits loss.

On real batches of the MCQ task and a completion task, as the run's own SFT trainer collates them,
for each decoder family (llama, qwen3, gpt2): the kept-rows loss, and the gradient of every adapter
weight, equal (to 1e-6 relative, fp32 on CPU) both full-logits ways, trl's fused head over every
position and the model's own forward with labels (transformers' loss on the full logits). The
metrics trl logs (entropy, mean_token_accuracy) are the same too. Loss and gradients agree as well
with trained injected tokens on a tied head (peft's wrapper as the head module). And a short run's loss curve is
the one its trainer gives with `full_logits = True` (every position, as before).
"""
import pytest
import torch

from lorasweep.model import loading, methods, tokens
from lorasweep.run import lm_head, loop
from lorasweep.run.lifecycle import run_config
from lorasweep.run.loop import trainer_arguments, sft_trainer
from lorasweep.run.plan import plan_run
from lorasweep.tasks import task as tasks

from conftest import TINY_MCQ, compose_config

REL = 1e-6
NO_DROPOUT = ["lora.dropout=0", "train.seed=0"]  # two forwards of one batch see the same model
COMPLETION = ["task=nl2bash", "task.max_train=16", "task.max_eval=4", "task.max_test=4", "train.max_length=512",
              "train.batch_size=4", "train.max_steps=4", "train.eval_steps=2"]
TASKS = {"mcq": [o for o in TINY_MCQ if not o.startswith("model=")], "completion": COMPLETION}
MODELS = ["tiny-llama", "tiny-qwen3", "tiny-gpt2"]


def trainer_and_batch(overrides, tmp_path, **arguments):
    """The run's SFT trainer (model with its LoRA adapters) and its first training batch; `arguments`
    override its TrainingArguments (bf16=True: the mixed precision a GPU run trains in)."""
    plan = plan_run(compose_config(overrides + NO_DROPOUT))
    spec, task = plan.spec, plan.task
    torch.manual_seed(0)
    model, tok, _ = loading.load_with_notes(spec.model, plan.head, task.num_labels)
    ids = tokens.inject(model, tok, spec.tokens.new, spec.tokens.init, spec.train.seed)
    model = methods.prepare(model, spec, plan.head, list(plan.targets), ids)
    trainer = sft_trainer(model, tok, tasks.training_data(task, tok, spec.train, plan.head), spec.train,
                          {**trainer_arguments(spec.train, tmp_path), **arguments})
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():  # lora_B starts at zero, which would leave lora_A without a gradient to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    model.train()
    return trainer, model, batch


def loss_and_grads(trainer, model, batch, num_items, way):
    """The training loss of `batch` one way, and the gradient of every trainable weight."""
    model.zero_grad()
    torch.manual_seed(0)  # gpt2's own dropout (embd, attn, resid: 0.1) draws the same masks each way
    if way == "model":  # transformers' own loss on the full logits
        loss = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")},
                     num_items_in_batch=num_items).loss
    else:
        trainer.full_logits = way == "trl"
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.detach(), grads, metrics


def assert_close(got, want, what):
    scale = want.abs().max().clamp(min=1e-30)
    assert ((got - want).abs().max() / scale).item() <= REL, what


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("task_name", list(TASKS))
def test_kept_rows_loss_and_gradients_equal_the_full_logits_ones(model_name, task_name, tmp_path):
    trainer, model, batch = trainer_and_batch(TASKS[task_name] + [f"model={model_name}"], tmp_path)
    kept = (batch["labels"][:, 1:] != -100).sum().item()
    assert 0 < kept < batch["labels"][:, 1:].numel() / 2, "a batch where most positions carry no loss"
    # num_items_in_batch as the Trainer passes it (gradient accumulation: a whole step's tokens), and None
    for num_items in (torch.tensor(kept + 5), None):
        new_loss, new_grads, new_metrics = loss_and_grads(trainer, model, batch, num_items, "kept")
        assert new_grads and all(g.abs().sum() > 0 for g in new_grads.values())
        for way in ("trl", "model"):
            loss, grads, metrics = loss_and_grads(trainer, model, batch, num_items, way)
            assert_close(new_loss, loss, f"loss vs {way}")
            assert new_grads.keys() == grads.keys()
            for name in grads:
                assert_close(new_grads[name], grads[name], f"grad of {name} vs {way}")
            if way == "trl" and not trainer.plain_loss:  # trl's metrics (not logged on the model's own forward)
                assert new_metrics.keys() == metrics.keys() >= {"entropy", "mean_token_accuracy"}
                for key in metrics:
                    assert new_metrics[key] == pytest.approx(metrics[key], rel=REL, abs=1e-7), key


def test_trained_injected_tokens_on_a_tied_head_too(tmp_path):
    """peft's wrapper on the tied output layer (trained new-token rows): the head module on the kept
    rows, against the model's own forward on the full logits (what such a run trained with before)."""
    overrides = TASKS["mcq"] + ["model=tiny-qwen3", 'tokens.new=["<widget>","<signal>"]', "tokens.train=true"]
    trainer, model, batch = trainer_and_batch(overrides, tmp_path)
    assert trainer.plain_loss  # the head is peft's wrapper, not a Linear
    new_loss, new_grads, _ = loss_and_grads(trainer, model, batch, None, "kept")
    assert any("trainable_tokens_delta" in name for name in new_grads)
    for way in ("trl", "model"):  # with the wrapper, full_logits is the model's own forward
        loss, grads, _ = loss_and_grads(trainer, model, batch, None, way)
        assert_close(new_loss, loss, f"loss vs {way}")
        for name in grads:
            assert_close(new_grads[name], grads[name], f"grad of {name} vs {way}")


def test_a_short_runs_loss_curve_is_unchanged(tmp_path, monkeypatch):
    calls, kept_rows_loss = [], lm_head.kept_rows_loss
    monkeypatch.setattr(lm_head, "kept_rows_loss", lambda *a, **k: calls.append(1) or kept_rows_loss(*a, **k))

    def with_full_logits(full):
        def make(*args, **kwargs):
            trainer = sft_trainer(*args, **kwargs)
            trainer.full_logits = full
            return trainer
        return make

    def curve(folder, full):
        monkeypatch.setattr(loop, "sft_trainer", with_full_logits(full))
        calls.clear()
        result = run_config(compose_config(TINY_MCQ + ["method=lora", "train.seed=0", f"results_dir={folder}"]))
        assert result["status"] == "done"
        assert len(calls) == (0 if full else 4)  # one per training step: the switch switches
        return [(p["step"], p["train_loss"], p["loss"]) for p in result["curve"]], result["metrics"]["train"]["loss"]

    (kept, kept_loss), (full, full_loss) = curve(tmp_path / "kept", False), curve(tmp_path / "full", True)
    assert [p[0] for p in kept] == [p[0] for p in full] == [0, 2, 4]
    for (_, a_train, a_eval), (_, b_train, b_eval) in zip(kept, full):
        assert (a_train is None) == (b_train is None)  # none before training
        assert a_train is None or a_train == pytest.approx(b_train, rel=REL)
        assert a_eval == pytest.approx(b_eval, rel=REL)
    assert kept_loss == pytest.approx(full_loss, rel=REL)


def test_the_kept_rows_loss_trains_in_the_trainers_mixed_precision(tmp_path):
    """With bf16 (what a GPU run trains in; accelerate does bf16 autocast on a CPU too) the decoder
    runs under autocast, as the model's forward does when the Trainer has prepared it: the kept-rows
    loss goes around that forward, so it must enter the autocast itself."""
    trainer, model, batch = trainer_and_batch(TASKS["mcq"] + ["model=tiny-llama"], tmp_path, bf16=True)
    seen = []
    q_proj = next(m for name, m in model.named_modules() if name.endswith("q_proj.base_layer"))
    handle = q_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        loss = trainer.compute_loss(model, dict(batch))
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]  # the first layer's q_proj, called once
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
