"""End to end on tiny models and real data slices: every method trains, evaluates and writes its result."""
import functools
import json

import pytest
import torch
from peft import PeftModel

from lorasweep.errors import DataError
from lorasweep.model import loading
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.tasks.task import evaluator

from conftest import TINY_MCQ, TINY_TOPICS, compose_config

REQUIRED = {"schema", "run_key", "status", "reason", "config", "params", "metrics", "objective",
            "curve", "timing", "memory", "env", "artifacts"}


def run(overrides, results_dir):
    cfg = compose_config(overrides + [f"results_dir={results_dir}"])
    return cfg, run_config(cfg)


def run_folder(results_dir, result):
    return results_dir / f"{result['slug']}-{result['run_key']}"


def reload_and_evaluate(cfg, adapter):
    """Test metrics of a fresh base model with the saved adapter loaded (or bare, adapter=None)."""
    plan = plan_run(cfg)
    spec, task = plan.spec, plan.task
    model, tokenizer = loading.load_model(spec.model, plan.head, task.num_labels)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return evaluator(task, tokenizer, task.test, spec.train, plan.head)(model)


def stored(results_dir, result):
    return json.loads((run_folder(results_dir, result) / "result.json").read_text())


@pytest.mark.parametrize("base", [TINY_TOPICS, TINY_MCQ], ids=["classification", "mcq"])
@pytest.mark.parametrize("method", ["none", "lora", "dora", "full"])
def test_each_method_writes_a_valid_result(base, method, results_dir):
    cfg, result = run(base + [f"method={method}"], results_dir)
    on_disk = stored(results_dir, result)
    assert REQUIRED <= set(on_disk) and on_disk["status"] == "done" and on_disk["schema"] == 1
    test = on_disk["metrics"]["test"]
    assert test["n"] == cfg["task"]["max_test"] and 0 <= test["accuracy"] <= 1
    assert test["accuracy_se"] == pytest.approx((test["accuracy"] * (1 - test["accuracy"]) / test["n"]) ** 0.5)
    assert on_disk["objective"] == {"name": "test.accuracy", "value": test["accuracy"], "direction": "maximize"}
    p = on_disk["params"]
    assert p["predicted"] == p["trainable"]  # counted from the config before loading, equal to peft's
    if method == "none":
        assert p["trainable"] == 0 and on_disk["curve"] == [] and on_disk["artifacts"] == {}
    else:
        # curve: the step-0 point, then every eval_steps=2 of 4 steps
        assert [c["step"] for c in on_disk["curve"]] == [0, 2, 4]
        assert on_disk["timing"]["steps"] == 4 and on_disk["artifacts"]["size_bytes"] > 0
        assert on_disk["metrics"]["train"]["loss"] > 0  # mean training loss over the run
    if method in ("lora", "dora"):
        assert on_disk["config"]["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05, "proj": "qkvo"}
        assert p["n_adapted_modules"] == len(p["adapted_modules"]) == 2 * 4  # 2 layers x qkvo
        assert 0 < p["trainable"] < p["total"]
    if method == "full":
        assert p["trainable"] == p["total"]
    # the base's weights in float32 as held: everything but what the adapter added (full: all of it)
    base = p["total"] - (0 if method in ("full", "none") else p["trainable"])
    assert on_disk["memory"]["base_weights_mb"] == pytest.approx(base * 4 / 2**20, abs=0.05)
    assert "saved_vs_lora_mb" not in on_disk["memory"]  # a quantized base only (method=qlora, qlora8)


def test_dora_trains_magnitudes_on_top_of_lora(results_dir):
    _, lora = run(TINY_TOPICS + ["method=lora"], results_dir)
    _, dora = run(TINY_TOPICS + ["method=dora"], results_dir)
    # one magnitude per output feature of each adapted 64x64 projection: 8 modules x 64
    assert dora["params"]["trainable"] - lora["params"]["trainable"] == 8 * 64


def test_training_lowers_the_loss(results_dir):
    _, result = run(TINY_TOPICS + ["method=full", "train.max_steps=12", "train.eval_steps=12",
                                   "train.lr=3e-3", "task.max_eval=32"], results_dir)
    curve = result["curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]


@pytest.mark.parametrize("base,method", [(TINY_TOPICS, "lora"), (TINY_MCQ, "dora")], ids=["cls-lora", "mcq-dora"])
def test_adapter_round_trip_gives_the_same_predictions(base, method, results_dir):
    cfg, result = run(base + [f"method={method}", "train.lr=5e-3"], results_dir)
    metrics = reload_and_evaluate(cfg, run_folder(results_dir, result) / result["artifacts"]["path"])
    assert metrics["accuracy"] == result["metrics"]["test"]["accuracy"]
    assert metrics["loss"] == pytest.approx(result["metrics"]["test"]["loss"], abs=1e-5)
    # and the adapter changed the model: the reloaded scores differ from the bare base model's
    assert reload_and_evaluate(cfg, None)["loss"] != pytest.approx(metrics["loss"], abs=1e-6)


def test_a_finished_run_is_not_trained_again(results_dir):
    _, first = run(TINY_TOPICS, results_dir)
    folder = run_folder(results_dir, first)
    before = (folder / "result.json").stat().st_mtime_ns
    _, second = run(TINY_TOPICS, results_dir)
    assert second == first and (folder / "result.json").stat().st_mtime_ns == before


def test_malformed_row_is_reported_with_file_and_line_before_loading(tmp_path, results_dir):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "a dog", "label": "noun.animal"}\n{"text": "a cat"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field 'label'"):
        run(TINY_TOPICS + [f"task.train={bad}"], results_dir)
    assert not results_dir.exists()  # nothing was started


def test_budget_over_the_cap_is_recorded_not_trained(results_dir):
    _, result = run(TINY_TOPICS + ["method=full", "budget.max_trainable=1000"], results_dir)
    on_disk = stored(results_dir, result)
    assert on_disk["status"] == "skipped_budget" and "exceed the budget of 1,000" in on_disk["reason"]
    assert on_disk["params"]["trainable"] > 1000 and "metrics" not in on_disk


def test_over_budget_run_reads_no_weights(results_dir):
    # Qwen3-1.7B's weights cannot be had here: the skip must come from its shipped config alone
    _, result = run(["model=qwen3-1.7b", "task=wordnet_mcq", "lora.proj=qkvogud", "lora.r=16", "budget=1m"],
                    results_dir)
    assert result["status"] == "skipped_budget"
    assert result["params"] == {"trainable": 17_432_576, "predicted": 17_432_576}


def test_a_failing_run_leaves_a_failed_result_and_traceback(results_dir, monkeypatch):
    from lorasweep.run import lifecycle as run_module

    def explode(*a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(run_module, "train", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(TINY_TOPICS, results_dir)
    [folder] = list(results_dir.iterdir())
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "failed" and "disk on fire" in result["reason"]
    assert "RuntimeError: disk on fire" in (folder / "traceback.txt").read_text()
    monkeypatch.undo()
    _, again = run(TINY_TOPICS, results_dir)  # a failed run is retried, not skipped
    assert again["status"] == "done"


def test_a_run_failing_while_loading_leaves_a_failed_result_and_traceback(tmp_path, results_dir):
    """A weights file cut short: the run fails while loading its model and records it, with the
    traceback.txt a sweep's line points to (none was written, and no result)."""
    import model_zoo as zoo

    folder = zoo.model_folder(tmp_path / "my-bert", "bert")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Exception, match="invalid header length") as raised:
        run(["model=hf", f"model.id={folder}", *[a for a in TINY_TOPICS if not a.startswith("model=")]], results_dir)
    [run_dir] = list(results_dir.iterdir())
    said = f"{type(raised.value).__name__}: {raised.value}"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == said
    assert said in (run_dir / "traceback.txt").read_text()
    assert not (run_dir / "claim.json").exists()


def _floating_dtypes(output) -> set:
    """The dtypes of the floating tensors in a module's output (a tensor, tuple, list or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return {output.dtype} if output.is_floating_point() else set()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return set().union(*(_floating_dtypes(o) for o in output)) if output else set()
    return set()  # a cache object and the like


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, training runs in bf16 autocast on purpose")
@pytest.mark.parametrize("base", [TINY_TOPICS, TINY_MCQ], ids=["classification", "mcq"])
def test_cpu_training_is_fp32_not_bf16(base, results_dir, monkeypatch):
    """What the training forward passes compute in: no CPU autocast, every module's output fp32.

    The saved adapter alone cannot tell (peft keeps adapter weights in fp32 under bf16 autocast too),
    so forward hooks on every module of the prepared model (adapters included) record, for each call
    during a training step (module in train mode, grad enabled: not an evaluation), whether CPU
    autocast is on and the dtypes the module returned. Both trainers: Trainer and trl's SFTTrainer,
    whose SFTConfig defaults to bf16."""
    from lorasweep.model import methods

    calls = []  # (module name, CPU autocast on, floating output dtypes), training forwards only

    def record(name, module, args, output):
        if module.training and torch.is_grad_enabled():
            calls.append((name, torch.is_autocast_enabled("cpu"), _floating_dtypes(output)))

    prepare = methods.prepare

    def prepare_with_hooks(*args, **kwargs):
        model = prepare(*args, **kwargs)
        for name, module in model.named_modules():
            module.register_forward_hook(functools.partial(record, name))
        return model
    monkeypatch.setattr(methods, "prepare", prepare_with_hooks)
    cfg, result = run(base + ["method=lora"], results_dir)

    steps = cfg["train"]["max_steps"]
    # the model's forward once per training step: the whole model's for a classifier; an SFT step runs
    # the decoder under the LM head, which run/lm_head then applies to the loss tokens only
    top = "" if base is TINY_TOPICS else "base_model.model.model"
    assert [n for n, _, _ in calls].count(top) == steps
    assert any("lora_A" in n for n, _, _ in calls)  # the adapters' own forwards were seen too
    assert {on for _, on, _ in calls} == {False}, "CPU autocast was on during training"
    bad = sorted({(n, str(d)) for n, _, ds in calls for d in ds if d != torch.float32})
    assert not bad, f"modules computed in another dtype than float32 during training: {bad[:10]}"
    from safetensors.torch import load_file
    weights = load_file(run_folder(results_dir, result) / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}



@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_bfloat16_base_halves_its_weights_and_trains_float32_adapters(method, results_dir):
    """model.dtype=bfloat16: the frozen base is held in bf16 (half the memory) while the adapters stay
    float32; the run trains to about what the float32 base reaches (bf16 rounds the base's weights
    and the activations that pass through them: the test losses measured here differ by 7e-5
    relative for lora, 1e-7 for dora; bound 1%)."""
    from safetensors.torch import load_file

    _, bf16 = run(TINY_MCQ + [f"method={method}", "model.dtype=bfloat16"], results_dir)
    _, fp32 = run(TINY_MCQ + [f"method={method}"], results_dir)
    assert bf16["status"] == fp32["status"] == "done" and bf16["run_key"] != fp32["run_key"]
    base = bf16["params"]["total"] - bf16["params"]["trainable"]
    assert bf16["memory"]["base_weights_mb"] == pytest.approx(base * 2 / 2**20, abs=0.05)
    assert fp32["memory"]["base_weights_mb"] == pytest.approx(base * 4 / 2**20, abs=0.05)
    weights = load_file(run_folder(results_dir, bf16) / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    loss16, loss32 = bf16["metrics"]["test"]["loss"], fp32["metrics"]["test"]["loss"]
    assert abs(loss16 - loss32) / loss32 < 0.01, (loss16, loss32)
    assert [c["step"] for c in bf16["curve"]] == [c["step"] for c in fp32["curve"]]


@pytest.mark.real_model
def test_real_minilm_lora_learns_and_its_adapter_reloads(results_dir):
    """The packaged MiniLM on a real data slice: a short LoRA run beats the untrained base model."""
    small = ["model=minilm", "task.max_train=480", "task.max_eval=100", "task.max_test=200",
             "train.epochs=2", "train.eval_steps=30", "lora.proj=qkvoud", "lora.r=16"]
    _, none = run(small + ["method=none"], results_dir)
    cfg, lora = run(small + ["method=lora"], results_dir)
    assert lora["params"]["n_adapted_modules"] == 6 * 6  # 6 layers x qkvoud
    # 26 classes: the random head scores near 1/26; 60 steps of LoRA pass the majority class (14.5%)
    before, after = none["metrics"]["test"]["accuracy"], lora["metrics"]["test"]["accuracy"]
    assert before < 0.1 and after > 0.2, (before, after)
    again = reload_and_evaluate(cfg, run_folder(results_dir, lora) / lora["artifacts"]["path"])
    assert again["accuracy"] == lora["metrics"]["test"]["accuracy"]
