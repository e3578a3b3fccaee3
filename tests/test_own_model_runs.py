"""`python launch.py model=hf model.id=FOLDER`: one short run per family group, on local model
folders made here (random weights, a character-level tokenizer beside): a decoder (llama), a fused
decoder (phi3: qkv_proj, gate_up_proj), encoders (deberta-v2, modernbert), an encoder-decoder (t5), an
MoE decoder's experts (qwen3_moe: 3-D parameters, peft's target_parameters)."""
import json

import pytest

import model_zoo as zoo
from conftest import launch

SHORT = ["train.max_steps=2", "train.eval_steps=2", "train.batch_size=4", "train.eval_batch_size=8",
         "task.max_train=8", "task.max_eval=8", "task.max_test=8"]
RUNS = [  # (model_type, task, lora.proj, modules adapted)
    ("llama", "wordnet_mcq", "qkvogud", 14),
    ("phi3", "wordnet_mcq", "all", 8),         # qkv_proj, o_proj, gate_up_proj, down_proj x 2 layers
    ("deberta-v2", "wordnet_topics", "qv", 4),
    ("modernbert", "wordnet_topics", "qkvgu", 4),  # Wqkv and mlp.Wi, fused: all of them or none
    ("t5", "wordnet_topics", "qv", 12),        # encoder self, decoder self and cross attention
]


@pytest.mark.parametrize("model_type,task,proj,n", RUNS)
def test_one_short_run_of_an_own_model_folder(tmp_path, model_type, task, proj, n):
    folder = zoo.model_folder(tmp_path / f"my-{model_type}", model_type)
    proc = launch(["model=hf", f"model.id={folder}", f"task={task}", f"lora.proj={proj}", *SHORT,
                   f"results_dir={tmp_path / 'results'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = (tmp_path / "results").glob("*/result.json")
    result = json.loads(path.read_text())
    assert result["status"] == "done" and path.parent.name.startswith(f"my-{model_type}-{task}-lora-{proj}-r8-")
    assert result["config"]["model"]["family"] == model_type and result["config"]["model"]["id"] == str(folder)
    assert result["params"]["trainable"] == result["params"]["predicted"]
    assert result["params"]["n_adapted_modules"] == n


def test_a_short_run_trains_the_experts_of_an_moe_folder(tmp_path):
    folder = zoo.model_folder(tmp_path / "my-moe", "qwen3_moe")  # 4 experts a layer, 2 layers
    proc = launch(["model=hf", f"model.id={folder}", "task=wordnet_mcq", "lora.proj=qkvogud", "lora.dropout=0",
                   *SHORT, f"results_dir={tmp_path / 'results'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = (tmp_path / "results").glob("*/result.json")
    result = json.loads(path.read_text())
    assert result["status"] == "done" and result["params"]["trainable"] == result["params"]["predicted"]
    assert result["params"]["n_adapted_modules"] == 12  # q k v o + the experts' gate_up_proj and down_proj, x 2
    assert {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"} <= \
        set(result["params"]["adapted_modules"])
    adapter = json.loads((path.parent / "adapter" / "adapter_config.json").read_text())
    assert len(adapter["target_parameters"]) == 4 and len(adapter["target_modules"]) == 8


def test_the_plan_shows_the_modules_all_covers(tmp_path):
    folder = zoo.config_folder(tmp_path / "my-phi3", "phi3")  # config.json alone: a plan reads no weight
    proc = launch(["-m", "model=hf", f"model.id={folder}", "task=wordnet_mcq", "lora.proj=all,qkvo",
                   "hydra/launcher=plan"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("  lora.proj=all on model=my-phi3 adapts 8 modules: self_attn.o_proj, self_attn.qkv_proj, "
            "mlp.gate_up_proj, mlp.down_proj") in proc.stdout.splitlines()
    assert "total: 2 runs: 2 not started; 2 to run" in proc.stdout


def test_a_letter_the_model_cannot_map_is_refused_in_one_line(tmp_path):
    folder = zoo.config_folder(tmp_path / "my-phi", "phi")  # its MLP is fc1 (up) and fc2 (down): no gate
    proc = launch(["model=hf", f"model.id={folder}", "task=wordnet_mcq", "lora.proj=qg"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [said] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert said.startswith("error: lora.proj='qg': the phi model has no map for 'g' (MLP gate)")
    assert "mlp.fc1, mlp.fc2" in said and "+model.projections.g=" in said and "lora.proj=all" in said
    assert not (tmp_path / "results").exists()
