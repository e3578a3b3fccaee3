"""The embedded default, smollm2-4l: SmolLM2-135M's first 4 layers, real weights from the packaged
GGUF. Its projection table and parameter counts are checked against peft on its meta model; its
weights against the checkpoint's own first layers."""
import pytest
import torch
from safetensors import safe_open

from lorasweep.config.spec import from_config
from lorasweep.errors import ConfigError
from lorasweep.model import loading, methods, params, projections
from lorasweep.model.assets import gguf_model_dir

from conftest import compose_config, launch

# The design card's nine cells: (r, code) -> trainable parameters, the 26-label head (576 x 26 + 26) included
DESIGN_CARD = {
    (4, "qk"): 45_696, (4, "qkvo"): 76_416, (4, "qvkogdu"): 177_792,
    (8, "qk"): 76_416, (8, "qkvo"): 137_856, (8, "qvkogdu"): 340_608,
    (16, "qk"): 137_856, (16, "qkvo"): 260_736, (16, "qvkogdu"): 666_240,
}
LAYER0 = {
    "qk": ["q_proj", "k_proj"],
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qvkogdu": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def default_spec(overrides=()):
    return from_config(compose_config(list(overrides)))


def test_the_default_is_smollm2s_first_4_layers_and_brings_its_one_epoch_recipe():
    spec = default_spec()
    assert (spec.model.name, spec.model.family, spec.model.layers, spec.model.file) == \
        ("smollm2-4l", "llama", 4, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert spec.train.epochs == 1 and spec.task.name == "wordnet_topics"
    # the recipe travels with the model only: minilm keeps the shared train defaults, and the
    # command line still wins over the model's recipe
    assert default_spec(["model=minilm"]).train.epochs == 2
    assert default_spec(["train.epochs=3"]).train.epochs == 3
    # a model that keeps all its layers has the run keys it had before model.layers existed
    assert "layers" not in default_spec(["model=minilm"]).defining()["model"]
    assert default_spec().defining()["model"]["layers"] == 4


@pytest.mark.parametrize("value", [-1, 1.5, "two"])
def test_model_layers_must_be_a_whole_number(value):
    with pytest.raises(ConfigError, match=rf"model\.layers={value!r} is invalid: a whole number: keep the first "
                                          r"N transformer layers, or 0 for all"):
        default_spec([f"model.layers={value}"])


@pytest.mark.real_model
def test_more_layers_than_the_checkpoint_has_is_refused_before_anything_trains(tmp_path):
    proc = launch(["model.layers=31"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "model 'smollm2-4l': model.layers=31 is invalid: the checkpoint has 30 layers; keep 1 to 30, or 0 " \
        "for all" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


@pytest.mark.real_model
def test_design_card_cells_resolve_every_letter_and_count_like_peft():
    spec = default_spec()
    skeleton = loading.build_on_meta(spec.model, "classification", 26)
    assert skeleton.config.num_hidden_layers == 4 and len(skeleton.model.layers) == 4
    for (r, code), expected in DESIGN_CARD.items():
        targets = projections.resolve_modules(skeleton, "llama", code, skeleton.config)
        layer0 = [name.rsplit(".", 1)[1] for name in targets if ".layers.0." in name]
        assert layer0 == LAYER0[code] and len(targets) == 4 * len(code)
        predicted = params.predict_trainable(skeleton, "lora", targets, r, "classification")
        cell = default_spec([f"lora.r={r}", f"lora.proj={code}"])
        with torch.device("meta"):
            wrapped = methods.prepare(loading.build_on_meta(spec.model, "classification", 26), cell,
                                      "classification", targets)
        assert predicted == methods.count_parameters(wrapped)[0] == expected, (r, code)


@pytest.mark.real_model
def test_its_weights_are_the_checkpoints_first_four_layers_and_the_rest_is_said_once():
    spec = default_spec().model
    model, _, notes = loading.load_with_notes(spec, "classification", 26)
    assert notes.layers_left_out == 26 and notes.unused == ()
    assert set(notes.new) == {"score.weight"}  # the new head, nothing else
    with safe_open(str(gguf_model_dir(spec) / "model.safetensors"), "pt") as checkpoint:
        for name in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight",
                     "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
            assert torch.equal(model.get_parameter(name), checkpoint.get_tensor(name)), name
        assert "model.layers.4.mlp.down_proj.weight" in checkpoint.keys()  # there, and left out


@pytest.mark.real_model
def test_a_short_default_run_says_what_it_kept(tmp_path):
    proc = launch(["train.max_steps=2", "train.eval_steps=2", "task.max_train=32", "task.max_eval=16",
                   "task.max_test=16"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("smollm2-4l-wordnet_topics-lora-qkvo-r8: the model keeps the first 4 of the "
                             "checkpoint's 30 layers (model.layers=4): the top 26 are not loaded") == 1
    assert "16 adapted modules" in proc.stderr  # 4 layers x qkvo
    assert "not used by this model" not in proc.stderr and "LOAD REPORT" not in proc.stderr
