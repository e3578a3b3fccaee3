"""rslora, pissa and the quantized methods behind the method interface: counts, scaling, saved adapters."""
import importlib.util
import json

import pytest
import torch
from peft import PeftModel

from lorasweep.config.spec import from_config
from lorasweep.errors import ConfigError
from lorasweep.model import loading
from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run
from lorasweep.tasks.task import evaluator

from conftest import TINY_MCQ, TINY_TOPICS, compose_config, launch


def run(overrides, results_dir):
    cfg = compose_config(overrides + [f"results_dir={results_dir}"])
    return cfg, run_config(cfg)


@pytest.mark.parametrize("method", ["rslora", "pissa"])
@pytest.mark.parametrize("base", [TINY_TOPICS, TINY_MCQ], ids=["classification", "mcq"])
def test_trains_the_same_parameters_as_lora(base, method, results_dir):
    _, lora = run(base + ["method=lora"], results_dir)
    _, other = run(base + [f"method={method}"], results_dir)
    assert other["status"] == "done" and other["params"]["predicted"] == other["params"]["trainable"]
    assert other["params"]["trainable"] == lora["params"]["trainable"]
    assert other["params"]["adapted_modules"] == lora["params"]["adapted_modules"]
    assert other["config"]["method"] == method and other["config"]["lora"]["r"] == 8


def test_rslora_scales_by_alpha_over_sqrt_r():
    from lorasweep.model import methods
    spec = from_config(compose_config(TINY_TOPICS + ["method=rslora", "lora.r=16"]))
    model, _ = loading.load_model(spec.model, "classification", 26)
    adapted = methods.prepare(model, spec, "classification", ["bert.encoder.layer.0.attention.self.query"])
    scaling = adapted.base_model.model.bert.encoder.layer[0].attention.self.query.scaling["default"]
    assert scaling == 32 / 16 ** 0.5  # alpha = 2 x r = 32; lora would use 32 / 16 = 2


def test_pissa_adapter_applies_to_the_original_base(results_dir):
    """PiSSA rewrites the base weights; the saved adapter (converted, rank 2r) must reproduce the
    run's predictions on the untouched base model."""
    cfg, result = run(TINY_TOPICS + ["method=pissa", "train.lr=5e-2"], results_dir)
    folder = results_dir / f"{result['slug']}-{result['run_key']}"
    adapter = folder / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16  # 2 x r after conversion
    assert not (folder / "pissa_init").exists()  # the initial adapter was only needed for the conversion
    plan = plan_run(cfg)
    spec, task = plan.spec, plan.task
    base, tokenizer = loading.load_model(spec.model, plan.head, task.num_labels)
    reloaded = PeftModel.from_pretrained(base, adapter)
    metrics = evaluator(task, tokenizer, task.test, spec.train, plan.head)(reloaded)
    assert metrics["accuracy"] == result["metrics"]["test"]["accuracy"]
    assert metrics["loss"] == pytest.approx(result["metrics"]["test"]["loss"], abs=1e-4)


CUDA = torch.cuda.is_available()
BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(CUDA and BITSANDBYTES, reason="this machine has a CUDA GPU and bitsandbytes: nothing is missing")
@pytest.mark.parametrize("method", ["qlora", "qlora8"])
def test_quantized_methods_say_what_is_missing_before_loading(method, tmp_path):
    # what this machine lacks: no GPU (said first), or a GPU without bitsandbytes
    missing = r"a CUDA GPU \(this machine has none\)" if not CUDA else r"the bitsandbytes package \(pip install bitsandbytes\);"
    with pytest.raises(ConfigError, match=rf"method={method} loads the base model quantized with bitsandbytes "
                                          rf"and needs {missing}") as info:
        plan_run(compose_config(TINY_MCQ + [f"method={method}"]))
    assert ("this machine has none" in str(info.value)) == (not CUDA)
    proc = launch(TINY_MCQ + [f"method={method}", f"results_dir={tmp_path}/results"], cwd=tmp_path)
    assert proc.returncode == 2 and "use method=lora here" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_pruned_pissa_run_leaves_no_initial_adapter(results_dir):
    """The initial adapter serves the conversion of a trained one: a run stopped by its pruner has none."""
    cfg = compose_config(TINY_TOPICS + ["method=pissa", f"results_dir={results_dir}"])
    result = run_config(cfg, reporter=lambda step, metrics: step > 0)  # the pruner stops it at its first evaluation
    folder = results_dir / f"{result['slug']}-{result['run_key']}"
    assert result["status"] == "pruned" and json.loads((folder / "result.json").read_text())["status"] == "pruned"
    assert sorted(p.name for p in folder.iterdir()) == ["progress.json", "result.json"]


def test_a_pissa_run_failing_in_training_leaves_its_result_and_traceback_only(results_dir, monkeypatch):
    """No initial adapter, no empty trainer/ folder: what analysis reads (result.json) and why it failed."""
    import transformers

    def fails(self, *args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(transformers.Trainer, "training_step", fails)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(TINY_TOPICS + ["method=pissa"], results_dir)
    [folder] = list(results_dir.iterdir())
    assert json.loads((folder / "result.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in folder.iterdir()) == ["progress.json", "result.json", "traceback.txt"]
