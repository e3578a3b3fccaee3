"""Packs (several runs trained at once over one frozen base): each run's result is the one it has alone.

Every test trains the same runs twice through the public entry points, alone (run_config, the real
Trainer) and packed (run_pack), on tiny random models of each family with real peft adapters, and
compares the saved adapters and the metrics.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from safetensors.torch import load_file

from lorasweep.model import adapter_pack
from lorasweep.run.lifecycle import run_config
from lorasweep.run.pack import run_pack

STEPS = ["train.max_steps=20", "train.eval_steps=10", "train.batch_size=4", "task.max_train=40",
         "task.max_eval=12", "task.max_test=16", "task=wordnet_topics"]  # 2 epochs of 10 steps
# dropout 0 everywhere (LoRA's and the base model's): a run's masks in a pack are not its masks alone
NO_DROPOUT = {"tiny-bert": ["+model.tiny.hidden_dropout_prob=0", "+model.tiny.attention_probs_dropout_prob=0"],
              "tiny-gpt2": ["+model.tiny.resid_pdrop=0", "+model.tiny.embd_pdrop=0", "+model.tiny.attn_pdrop=0"],
              "tiny-llama": [], "tiny-qwen3": []}
# mixed ranks, projections, learning rates, methods, weight decay, warmup and seeds
RUNS = {"tiny-bert": [["lora.r=2", "lora.proj=qk", "train.lr=1e-3"],
                      ["lora.r=4", "lora.proj=qkvo", "train.lr=3e-3", "method=dora", "train.seed=1"],
                      ["lora.r=8", "lora.proj=vud", "train.lr=2e-3", "method=rslora", "train.weight_decay=0.1"],
                      ["lora.r=4", "lora.proj=q", "train.lr=5e-3", "train.warmup_ratio=0.2"]],
        "tiny-gpt2": [["lora.r=2", "lora.proj=qkv", "train.lr=1e-3"],
                      ["lora.r=4", "lora.proj=qkvo", "train.lr=3e-3", "method=dora"],
                      ["lora.r=8", "lora.proj=ud", "train.lr=2e-3", "train.seed=2"]]}
RUNS["tiny-llama"] = RUNS["tiny-qwen3"] = [["lora.r=2", "lora.proj=qk", "train.lr=1e-3"],
                                           ["lora.r=4", "lora.proj=qkvogud", "train.lr=3e-3", "method=dora"],
                                           ["lora.r=8", "lora.proj=vo", "train.lr=2e-3", "train.seed=1"]]
TOLERANCE = 1e-4  # relative to the tensor's largest value: the pack's larger GEMMs may round differently
# How a pack's layers apply their runs' adapters (train.pack_product, model/adapter_pack): one grouped product
# pair over every run's rows (auto's way), a loop over the runs' blocks, or batched products over blocks of
# equal size. The batched products sum in another order than a run alone's: largest adapter differences
# measured 1.5e-5 (classification, 20 steps) and 1.1e-4 (tiny-llama SFT, 12 steps at lr up to 3e-3), so
# they get their own bound.
# The grouped products (torch's grouped_mm) equal F.linear's bit for bit on some CPUs (an Intel machine,
# 2026-12-05: every difference 0) but not on others: on an AMD EPYC with AVX512 (2026-12-06) a 64x32 by
# 32x4 product differs in its last bit (2.4e-7), which training amplifies as the batched products' other
# order does (1.1e-4 after 12 SFT steps on tiny-llama): the same bounds as batched.
PRODUCTS = ("grouped", "loop", "batched")
TOLERANCES = {"grouped": 5e-4, "loop": TOLERANCE, "batched": 5e-4}
# Over a bf16 base each layer's output is rounded to bf16, so the batched products' other summation
# order flips some roundings and the adapters drift further (measured 3.9e-2 after 12 SFT steps on
# tiny-qwen3, its largest tensor-relative difference; grouped on the AMD EPYC: 1.8e-2), while the
# runs' losses still agree within 5e-4.
BF16_ADAPTER_TOLERANCE = 0.1


@pytest.fixture(params=PRODUCTS)
def products(request) -> str:
    """Each test using it packs with each way of applying the adapters (train.pack_product)."""
    return request.param


def _adapted_layers(results: list[dict]) -> int:
    """How many layers of the pack's model hold an adapter: the runs' adapted modules, together."""
    return len(set().union(*(r["params"]["adapted_modules"] for r in results)))


def _configs(model: str, results: Path, extra: list[str] = ()) -> list[dict]:
    return [compose_config([f"model={model}", *STEPS, "lora.dropout=0", *NO_DROPOUT[model], *run, *extra,
                            f"results_dir={results}"]) for run in RUNS[model]]


def _largest_difference(alone: Path, packed: Path) -> float:
    """The largest difference between the saved adapters, relative to each tensor's largest value;
    their files must be alike (the same config, labels and tensor names)."""
    for name in ("adapter_config.json", "labels.json"):  # labels.json: a classification head's labels
        assert (alone / "adapter" / name).exists() == (packed / "adapter" / name).exists()
        if (alone / "adapter" / name).exists():
            assert json.loads((alone / "adapter" / name).read_text()) == json.loads((packed / "adapter" / name).read_text())
    a, p = load_file(alone / "adapter" / "adapter_model.safetensors"), load_file(packed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == p.keys()
    return max(((a[k] - p[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)


@pytest.mark.parametrize("model", list(RUNS))
def test_a_packed_run_trains_as_it_would_alone(model, products, tmp_path, capsys):
    """17 steps, a multiple of neither eval_steps (10) nor logging_steps (2): the Trainer evaluates at
    the last step too, and logs no loss for the last, unfinished window; so does the pack."""
    tolerance = TOLERANCES[products]
    steps = ["train.max_steps=17"]
    alone = [run_config(cfg) for cfg in _configs(model, tmp_path / "alone", steps)]
    packed = run_pack(_configs(model, tmp_path / "packed", [*steps, f"train.pack_product={products}"]))
    worst = 0.0
    for a, p in zip(alone, packed):
        assert p["status"] == a["status"] == "done"
        assert p["run_key"] == a["run_key"]
        assert p["params"] == a["params"]
        assert p["pack"]["size"] == len(alone) and p["pack"]["runs"] == [r["run_key"] for r in alone]
        assert p["pack"]["product"] == {products: _adapted_layers(alone)}  # the way every adapted layer took
        assert p.keys() - {"pack"} == a.keys() and p["memory"].keys() == a["memory"].keys()  # the same record
        assert p["memory"]["base_weights_mb"] == a["memory"]["base_weights_mb"] > 0
        worst = max(worst, _largest_difference(tmp_path / "alone" / Path(a["slug"] + "-" + a["run_key"]),
                                               tmp_path / "packed" / Path(p["slug"] + "-" + p["run_key"])))
        assert p["metrics"]["test"]["accuracy"] == a["metrics"]["test"]["accuracy"]
        assert p["metrics"]["test"]["loss"] == pytest.approx(a["metrics"]["test"]["loss"], rel=tolerance)
        assert p["metrics"]["train"]["loss"] == pytest.approx(a["metrics"]["train"]["loss"], rel=tolerance)
        assert [c["step"] for c in p["curve"]] == [c["step"] for c in a["curve"]] == [0, 10, 17]
        for pc, ac in zip(p["curve"], a["curve"]):
            assert pc["accuracy"] == ac["accuracy"]
            assert pc["loss"] == pytest.approx(ac["loss"], rel=tolerance)
            assert (pc["train_loss"] is None) == (ac["train_loss"] is None)
            if ac["train_loss"] is not None:
                assert pc["train_loss"] == pytest.approx(ac["train_loss"], rel=tolerance)
    print(f"{model} {products}: largest relative difference of a packed adapter from its run alone: {worst:.2e}")
    assert worst < tolerance


# lora, dora and rslora side by side on each family, with mixed ranks (2 is padded to grouped_mm's 16 bytes)
# and projections: some layers adapted by one run, some by all three
GROUPED_RUNS = {"tiny-bert": [["lora.r=2", "lora.proj=qk"], ["lora.r=4", "lora.proj=qkvo", "method=dora"],
                              ["lora.r=8", "lora.proj=vud", "method=rslora", "train.seed=1"]],
                "tiny-gpt2": [["lora.r=2", "lora.proj=qkv"], ["lora.r=4", "lora.proj=qkvo", "method=dora"],
                              ["lora.r=8", "lora.proj=ud", "method=rslora", "train.seed=2"]]}
GROUPED_RUNS["tiny-llama"] = GROUPED_RUNS["tiny-qwen3"] = [
    ["lora.r=2", "lora.proj=qk"], ["lora.r=4", "lora.proj=qkvogud", "method=dora"],
    ["lora.r=8", "lora.proj=vo", "method=rslora", "train.seed=1"]]
# float32: measured 0 on an Intel CPU, 4.0e-5 on an AMD EPYC (grouped_mm's last bit: see TOLERANCES)
GROUPED_TOLERANCE = 1e-4
FEW_STEPS = ["train.max_steps=4", "train.eval_steps=4", "train.lr=3e-3"]


def _grouped(model: str, results: Path, extra: list[str] = (), runs: list[list[str]] | None = None) -> list[dict]:
    return [compose_config([f"model={model}", *STEPS, *FEW_STEPS, "lora.dropout=0", *NO_DROPOUT[model], *run, *extra,
                            f"results_dir={results}"]) for run in runs or GROUPED_RUNS[model]]


@pytest.mark.parametrize("model", list(GROUPED_RUNS))
def test_grouped_products_train_each_run_as_alone(model, tmp_path):
    """train.pack_product=grouped: each adapted layer applies the three runs' adapters (lora, dora,
    rslora) in one grouped A product and one grouped B product; every run's adapter is its run alone's
    within 1e-5 of each tensor's largest value, and each result says that every layer took them."""
    alone = [run_config(cfg) for cfg in _grouped(model, tmp_path / "alone")]
    packed = run_pack(_grouped(model, tmp_path / "packed", ["train.pack_product=grouped"]))
    differences = []
    for a, p in zip(alone, packed):
        assert p["status"] == a["status"] == "done" and p["run_key"] == a["run_key"]
        assert p["pack"]["product"] == {"grouped": _adapted_layers(alone)}
        differences.append(_largest_difference(tmp_path / "alone" / f"{a['slug']}-{a['run_key']}",
                                               tmp_path / "packed" / f"{p['slug']}-{p['run_key']}"))
        assert p["metrics"]["test"]["loss"] == pytest.approx(a["metrics"]["test"]["loss"], rel=GROUPED_TOLERANCE)
    print(f"{model} grouped: largest relative difference of a packed adapter from its run alone: {max(differences):.2e}")
    assert max(differences) < GROUPED_TOLERANCE


def test_a_layer_grouped_products_cannot_take_loops_and_the_result_says_so(tmp_path):
    """grouped_mm wants every row stride a multiple of 16 bytes: with an MLP 98 wide (not a multiple
    of 4 floats) the gate, up and down projections apply their adapters one run after another, the
    attention's in grouped products, and the runs are still as alone (auto's way on the CPU)."""
    narrow = ["model.tiny.intermediate_size=98"]
    runs = [["lora.r=2", "lora.proj=qkvogud"], ["lora.r=4", "lora.proj=qkvogud", "method=dora"]]
    alone = [run_config(cfg) for cfg in _grouped("tiny-llama", tmp_path / "alone", narrow, runs)]
    packed = run_pack(_grouped("tiny-llama", tmp_path / "packed", narrow, runs))
    for a, p in zip(alone, packed):
        assert p["pack"]["product"] == {"grouped": 8, "loop": 6}  # q k v o, and g u d, in each of 2 layers
        assert _largest_difference(tmp_path / "alone" / f"{a['slug']}-{a['run_key']}",
                                   tmp_path / "packed" / f"{p['slug']}-{p['run_key']}") < GROUPED_TOLERANCE


# causal-LM SFT: chat-format MCQ (scored by option log-likelihood) and prompt -> completion (generated)
SFT = {"tiny-llama": "task=wordnet_mcq", "tiny-qwen3": "task=wordnet_mcq", "tiny-gpt2": "task=nl2bash"}
SFT_STEPS = ["train.max_steps=12", "train.eval_steps=6", "train.batch_size=4", "task.max_train=24",
             "task.max_eval=8", "task.max_test=12"]


@pytest.mark.parametrize("model,dtype", [(m, "float32") for m in SFT] + [("tiny-qwen3", "bfloat16")])
def test_a_packed_sft_run_trains_as_it_would_alone(model, dtype, products, tmp_path):
    """The runs of an SFT pack each take trl's loss on their own rows (the head on the tokens that
    carry loss, over their own count of them) and their own task evaluation: as alone. Also over a
    bf16 base (model.dtype=bfloat16), its adapters float32."""
    tolerance = TOLERANCES[products]
    def configs(results, extra=()):
        return [compose_config([f"model={model}", SFT[model], *SFT_STEPS, "lora.dropout=0", *NO_DROPOUT[model],
                                *run, f"model.dtype={dtype}", *extra, f"results_dir={results}"]) for run in RUNS[model]]

    alone = [run_config(cfg) for cfg in configs(tmp_path / "alone")]
    packed = run_pack(configs(tmp_path / "packed", [f"train.pack_product={products}"]))
    worst = 0.0
    for a, p in zip(alone, packed):
        assert p["status"] == a["status"] == "done" and p["run_key"] == a["run_key"]
        assert p["pack"]["size"] == len(alone) and p["pack"]["product"] == {products: _adapted_layers(alone)}
        worst = max(worst, _largest_difference(tmp_path / "alone" / f"{a['slug']}-{a['run_key']}",
                                               tmp_path / "packed" / f"{p['slug']}-{p['run_key']}"))
        assert p["metrics"]["train"]["loss"] == pytest.approx(a["metrics"]["train"]["loss"], rel=tolerance)
        assert [c["step"] for c in p["curve"]] == [c["step"] for c in a["curve"]] == [0, 6, 12]
        for pm, am in [(p["metrics"]["test"], a["metrics"]["test"])] + list(zip(p["curve"], a["curve"])):
            assert pm.keys() == am.keys()
            for key, value in am.items():
                if key in ("loss", "loss_se", "train_loss") and value is not None:
                    assert pm[key] == pytest.approx(value, rel=tolerance), key
                elif key != "epoch":
                    assert pm[key] == value, key
    print(f"{model} {dtype} {products} SFT: largest relative difference of a packed adapter from its run alone: "
          f"{worst:.2e}")
    assert worst < (BF16_ADAPTER_TOLERANCE if dtype == "bfloat16" and products != "loop" else tolerance)


# three tiny-bert runs, the second at lr=1e4: its loss becomes NaN within a few steps (tests/test_faults.py)
ONE_DIVERGES = [["lora.r=2", "lora.proj=qk", "train.lr=1e-3"], ["lora.r=4", "lora.proj=qkvo", "train.lr=1e4"],
                ["lora.r=8", "lora.proj=v", "train.lr=2e-3"]]


def _one_diverges(results: Path, extra: list[str] = ()) -> list[dict]:
    return [compose_config(["model=tiny-bert", *STEPS, "lora.dropout=0", *NO_DROPOUT["tiny-bert"], *run, *extra,
                            f"results_dir={results}"]) for run in ONE_DIVERGES]


def test_a_run_that_diverges_leaves_the_pack_and_the_others_go_on_as_alone(products, tmp_path):
    """The diverging run stops in a pack at the same step with the same reason as alone, and the runs
    beside it are unchanged: its non-finite weights reach its own rows only."""
    alone = [run_config(cfg) for cfg in _one_diverges(tmp_path / "alone")]
    packed = run_pack(_one_diverges(tmp_path / "packed", [f"train.pack_product={products}"]))
    assert [r["status"] for r in alone] == [r["status"] for r in packed] == ["done", "diverged", "done"]
    last = "last_finite_loss"
    assert packed[1]["divergence"][last] == pytest.approx(alone[1]["divergence"][last],
                                                          rel=TOLERANCES[products])
    assert {**packed[1]["divergence"], last: None} == {**alone[1]["divergence"], last: None}
    assert packed[1]["reason"] == alone[1]["reason"]  # the loss in 6 digits
    assert [c["step"] for c in packed[1]["curve"]] == [c["step"] for c in alone[1]["curve"]]
    assert not (tmp_path / "packed" / f"{packed[1]['slug']}-{packed[1]['run_key']}" / "adapter").exists()
    for a, p in zip(alone[::2], packed[::2]):
        assert p["metrics"]["test"]["accuracy"] == a["metrics"]["test"]["accuracy"]
        assert _largest_difference(tmp_path / "alone" / f"{a['slug']}-{a['run_key']}",
                                   tmp_path / "packed" / f"{p['slug']}-{p['run_key']}") < TOLERANCES[products]


def test_an_interrupted_pack_keeps_the_results_of_the_runs_that_left_it(tmp_path):
    """Ctrl-C at step 10 of 20: the run the pruner stopped at step 10 and the one that diverged at
    step 3 keep their results (written as they left); the run still training has none."""
    cfgs = _one_diverges(tmp_path)

    def interrupt(step, metrics):
        raise KeyboardInterrupt  # as Ctrl-C in the middle of the pack's evaluation at step 10

    with pytest.raises(KeyboardInterrupt):
        run_pack(cfgs, [lambda step, metrics: step == 10, None, interrupt])
    found = {json.loads(p.read_text())["config"]["lora"]["r"]: json.loads(p.read_text())
             for p in tmp_path.glob("*/result.json")}
    assert sorted(found) == [2, 4]
    assert found[2]["status"] == "pruned" and found[2]["timing"]["steps"] == 10
    assert found[4]["status"] == "diverged" and found[4]["pack"]["size"] == 3
    assert [c["step"] for c in found[2]["curve"]] == [0, 10]
    assert not any(tmp_path.glob("*-r2-*/trainer")) and not any(tmp_path.glob("*-r4-*/trainer"))


def test_a_failed_pack_fails_only_the_runs_still_in_it_and_the_driver_gets_each_runs_outcome(tmp_path, monkeypatch):
    """Saving the adapters fails after the second run diverged (step 3) while the third is claimed by
    another process: only the first fails (recorded, with its traceback); the second keeps diverged,
    the third is said claimed. Each outcome reaches the driver by run key through a pickle (a worker's
    pipe, a SLURM job's result), the failure with the worker's traceback chained under it."""
    import pickle
    from concurrent.futures import Future

    from lorasweep.config.spec import from_config
    from lorasweep.executors.worker import claimed_by, execute, pack_task
    from lorasweep.run.claims import Claim
    from lorasweep.run.store import run_dir
    from lorasweep.sweep.packs import per_run

    def unsaveable(self, adapter, target):
        raise RuntimeError("the adapter could not be saved")

    monkeypatch.setattr(adapter_pack.PackedModel, "save_adapter", unsaveable)
    cfgs = [compose_config(["model=tiny-bert", *STEPS, "train.max_steps=4", *run, f"results_dir={tmp_path}"])
            for run in ONE_DIVERGES]
    keys = [from_config(cfg).run_key for cfg in cfgs]
    folders = [run_dir(tmp_path, from_config(cfg).slug, key) for cfg, key in zip(cfgs, keys)]
    with Claim(folders[2]):  # another process's, as far as the pack can tell
        task = Future()
        task.set_result(pickle.loads(pickle.dumps(execute(pack_task(cfgs, folders)))))
    failed, diverged, claimed = per_run(task, keys[::-1])[::-1]  # matched by key, whatever the order
    error = failed.exception()
    assert isinstance(error, RuntimeError) and str(error) == "the adapter could not be saved"
    assert "Traceback (most recent call last)" in str(error.__cause__) and "in unsaveable" in str(error.__cause__)
    assert json.loads((folders[0] / "result.json").read_text())["status"] == "failed"
    assert "in unsaveable" in (folders[0] / "traceback.txt").read_text()
    assert diverged.result()["status"] == "diverged" and diverged.result()["run_key"] == keys[1]
    assert claimed_by(claimed).startswith("pid ") and not (folders[2] / "result.json").exists()


def test_a_pack_whose_model_cannot_be_had_records_no_failed_runs(tmp_path, monkeypatch):
    """As alone (run/lifecycle._load): a model that cannot be loaded is said, not kept as failed runs."""
    from lorasweep.errors import ModelUnavailableError
    from lorasweep.model import loading

    def unavailable(*args, **kwargs):
        raise ModelUnavailableError("tiny-bert is not in the cache")

    monkeypatch.setattr(loading, "load_with_notes", unavailable)
    outcomes = run_pack(_configs("tiny-bert", tmp_path)[:2])
    assert [type(o) for o in outcomes] == [ModelUnavailableError] * 2
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("claim.json"))


def test_a_full_disk_while_saving_a_packed_adapter_is_a_store_fault(tmp_path, monkeypatch):
    """As alone (run/lifecycle._save): no space left while saving an adapter is the StoreError that
    stops a sweep (whole_store), for each run still in the pack, and no half adapter is left."""
    import errno

    import peft

    from lorasweep.errors import StoreError

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    cfgs = [compose_config(["model=tiny-bert", *STEPS, "train.max_steps=2", *run, f"results_dir={tmp_path}"])
            for run in RUNS["tiny-bert"][:2]]
    results = run_pack(cfgs)
    assert [type(r) for r in results] == [StoreError, StoreError] and all(r.whole_store for r in results)
    assert not list(tmp_path.glob("*/adapter"))


def test_with_dropout_a_packed_run_draws_other_masks_and_stays_close(tmp_path):
    """With LoRA dropout a packed run is not its run alone: its masks come from the pack's one random
    stream, over its rows padded to the pack's longest batch, so no mask matches the run alone's (an
    exact match would need per-run random streams and equal padding). The weights differ as two
    draws of the masks do; what the run learns does not: its losses are bounded here after 20 steps
    at dropout 0.1."""
    extra = ["lora.dropout=0.1"]
    cfgs = [compose_config(["model=tiny-llama", *STEPS, *run, *extra, f"results_dir={tmp_path / 'alone'}"])
            for run in RUNS["tiny-llama"]]
    alone = [run_config(cfg) for cfg in cfgs]
    packed = run_pack([{**cfg, "results_dir": str(tmp_path / "packed")} for cfg in cfgs])
    differences = [_largest_difference(tmp_path / "alone" / f"{a['slug']}-{a['run_key']}",
                                       tmp_path / "packed" / f"{p['slug']}-{p['run_key']}")
                   for a, p in zip(alone, packed)]
    print(f"dropout 0.1: largest relative difference of a packed adapter from its run alone: {max(differences):.2e}")
    assert max(differences) > TOLERANCE  # other masks: not the same run to the bit
    for a, p in zip(alone, packed):  # but the same run in what it learns: its losses within 1%
        print(f"  train loss {a['metrics']['train']['loss']:.5f} alone, {p['metrics']['train']['loss']:.5f} packed; "
              f"test loss {a['metrics']['test']['loss']:.5f} alone, {p['metrics']['test']['loss']:.5f} packed")
        assert p["metrics"]["train"]["loss"] == pytest.approx(a["metrics"]["train"]["loss"], rel=0.01)
        assert p["metrics"]["test"]["loss"] == pytest.approx(a["metrics"]["test"]["loss"], rel=0.01)


def test_a_pack_trains_in_the_mixed_precision_of_its_runs(products, tmp_path, monkeypatch):
    """With bf16 (a GPU run's Trainer; accelerate does bf16 autocast on a CPU too) each step's forward
    runs under autocast, as accelerate puts it around a run alone's forward: the pack calls its model
    itself, never through Trainer.train. Either way of applying the adapters trains under it."""
    import lorasweep.run.loop as loop
    import lorasweep.run.pack as pack_module

    plain = loop.trainer_arguments
    monkeypatch.setattr(loop, "trainer_arguments", lambda *a, **k: {**plain(*a, **k), "bf16": True})
    seen, losses_of = [], pack_module.classification_losses

    def recorded(*args):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return losses_of(*args)

    monkeypatch.setattr(pack_module, "classification_losses", recorded)
    cfgs = [compose_config(["model=tiny-bert", *STEPS, "train.max_steps=3", *run, f"train.pack_product={products}",
                            f"results_dir={tmp_path}"]) for run in RUNS["tiny-bert"][:2]]
    results = run_pack(cfgs)
    assert [r["status"] for r in results] == ["done", "done"]
    assert seen == [(True, torch.bfloat16)] * 3
    assert results[0]["pack"]["product"] == {products: _adapted_layers(results)}


# A CPU has no accelerator to fill: a stand-in for one that holds two runs' rows of a step, no more.
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
               "of which 1.06 GiB is free.")


def _two_runs_fit(losses_of):
    def losses(pack, batch, blocks, live):
        if len(blocks) > 2:
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        return losses_of(pack, batch, blocks, live)
    return losses


def test_a_pack_that_runs_out_of_memory_trains_again_in_halves(tmp_path, monkeypatch, capsys):
    """4 runs on a GPU that holds 2 runs' steps: the pack of 4 trains again as two packs of 2 (a run
    that runs out of memory even alone: tests/test_pack_sweep.py)."""
    import lorasweep.run.pack as pack_module

    monkeypatch.setattr(pack_module, "classification_losses", _two_runs_fit(pack_module.classification_losses))
    runs = RUNS["tiny-bert"]
    cfgs = [compose_config(["model=tiny-bert", *STEPS, "lora.dropout=0", *run, f"results_dir={tmp_path / 'four'}"])
            for run in runs]
    results = run_pack(cfgs)
    assert [r["status"] for r in results] == ["done"] * 4
    assert [r["pack"]["size"] for r in results] == [2, 2, 2, 2]
    assert results[0]["pack"]["id"] == results[1]["pack"]["id"] != results[2]["pack"]["id"] == results[3]["pack"]["id"]
    said = capsys.readouterr().err
    assert re.search(r"^pack-\w{8}: out of accelerator memory on cuda:0 \(it tried to allocate 2\.00 GiB\) with 4 "
                     r"runs; 4 train again, 2 in a pack and 2 in a pack$", said, re.M), said
