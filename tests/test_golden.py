"""Golden values: the exact numbers tiny seeded runs compute today, pinned to 1e-6.

Like torchtune's recipe tests, which pin their recipes' loss curves: one tiny run per task kind
(classification, mcq, chat, completion; method lora) and per method (lora, dora, full, none; on
classification), on CPU in fp32. Per run the test pins every curve point (step, epoch, train_loss
and each eval metric), metrics.test (every value), metrics.train.loss and params.trainable, to
rel=1e-6 and abs=1e-6. A refactor that moves code around must leave all of them where they are.

Also pinned: the result.json contract and the results-store layout. The classification-lora run's
whole result.json (tests/golden/result_classification_lora.json, all but the fields that vary by
machine and time) and its run folder's name and files (tests/golden/store_classification_lora.json).

The runs' values live in tests/golden/values.json, beside the overrides of the run that made them.
Everything under tests/golden/ changes only on purpose, in a commit that says why. To regenerate:

    LORASWEEP_REGOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

rewrites the files from the current code and then fails each regenerated test, saying so: review
`git diff tests/golden/` and run the tests again without the variable.

The numbers belong to this environment's torch, transformers, peft and trl: a library upgrade may
move them (regenerate then, in its own commit). The thread count does not move them (checked:
torch.set_num_threads(1) and 2 give bit-identical runs; OMP_NUM_THREADS=1, 2, 4 and 8 all pass), so
it is not pinned. With CUDA, training runs in bf16 on the GPU: the CPU numbers do not apply and the
golden runs skip.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from lorasweep.run.lifecycle import run_config
from lorasweep.run.plan import plan_run

from conftest import ROOT, TINY_MCQ, TINY_TOPICS, compose_config

GOLDEN_DIR = Path(__file__).parent / "golden"
VALUES = GOLDEN_DIR / "values.json"
REGOLDEN = os.environ.get("LORASWEEP_REGOLDEN") == "1"
REL = ABS = 1e-6

SEED = ["train.seed=0"]
GENERATION = ["train.max_steps=4", "train.eval_steps=2", "train.batch_size=4", "train.eval_batch_size=4"]
CHAT_DATA = "tests/golden/chat.jsonl"  # 8 rows, relative to the project root (data paths resolve there)
RUNS = {
    # per method, on classification
    "classification-lora": TINY_TOPICS + ["method=lora"] + SEED,
    "classification-dora": TINY_TOPICS + ["method=dora"] + SEED,
    "classification-full": TINY_TOPICS + ["method=full"] + SEED,
    "classification-none": TINY_TOPICS + ["method=none"] + SEED,
    # per task kind, with lora
    "mcq-lora": TINY_MCQ + ["method=lora"] + SEED,
    "chat-lora": ["task=jsonl", "task.format=chat", "model=tiny-qwen3", f"task.train={CHAT_DATA}",
                  f"task.eval={CHAT_DATA}", f"task.test={CHAT_DATA}", *GENERATION, "method=lora"] + SEED,
    "completion-lora": ["task=nl2bash", "model=tiny-llama", *GENERATION, "task.max_train=16", "task.max_eval=4",
                        "task.max_test=4", "task.max_new_tokens=8", "train.max_length=512", "method=lora"] + SEED,
}

cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                              reason="golden values are CPU fp32 numbers; with CUDA, training runs in bf16 on the GPU")


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    """name -> (result as written to result.json, the run's results store): each run once per module,
    each in a results store of its own."""
    done: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in done:
            store = tmp_path_factory.mktemp(name) / "results"
            result = run_config(compose_config(RUNS[name] + [f"results_dir={store}"]))
            folder = store / f"{result['slug']}-{result['run_key']}"
            done[name] = json.loads((folder / "result.json").read_text()), store
        return done[name]
    return get


def pinned(result: dict) -> dict:
    """What a golden run pins: its curve, test metrics, mean training loss and trainable parameters."""
    return {"params.trainable": result["params"]["trainable"],
            "metrics.train.loss": (result["metrics"].get("train") or {}).get("loss"),
            "metrics.test": result["metrics"]["test"],
            "curve": result["curve"]}


def flatten(value, path: str = "") -> dict[str, object]:
    """{"curve[1].loss": 3.24, ...}: every leaf of nested dicts and lists under its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{path}.{key}" if path else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{path}[{i}]").items()} \
            if value else {path: []}
    return {path: value}


def differences(actual, expected) -> list[str]:
    """Every leaf that differs: floats beyond rel/abs 1e-6, anything else (ints, strings, None) at all."""
    got, want = flatten(actual), flatten(expected)
    out = [f"{k}: missing (expected {want[k]!r})" for k in want if k not in got]
    out += [f"{k}: unexpected {got[k]!r}" for k in got if k not in want]
    for k in want.keys() & got.keys():
        a, e = got[k], want[k]
        floats = any(isinstance(x, float) for x in (a, e)) and not any(isinstance(x, bool) for x in (a, e))
        if floats and all(isinstance(x, (int, float)) for x in (a, e)):
            if a != pytest.approx(e, rel=REL, abs=ABS, nan_ok=True):
                out.append(f"{k}: {a!r}, expected {e!r} (diff {a - e:.3g})" if not math.isnan(a - e)
                           else f"{k}: {a!r}, expected {e!r}")
        elif type(a) is not type(e) or a != e:
            out.append(f"{k}: {a!r}, expected {e!r}")
    return sorted(out)


def regenerate(*writes: tuple[Path, object]) -> None:
    """Write each (path, JSON value), then fail: a regenerated value is not a pass."""
    for path, value in writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=1) + "\n")
    names = ", ".join(str(path.relative_to(ROOT)) for path, _ in writes)
    pytest.fail(f"LORASWEEP_REGOLDEN=1: rewrote {names} from the current code; "
                f"review `git diff tests/golden/`, then run again without it", pytrace=False)


def golden_values() -> dict:
    return json.loads(VALUES.read_text())


def test_default_run_trains_137_856_parameters():
    """`python launch.py` with no arguments: smollm2-4l with lora r=8 on qkvo, 4 layers x (q, o: 8 x
    (576 + 576); k, v: 8 x (576 + 192)), plus its 26-class head (576 x 26, no bias). The default was
    MiniLM (157,466) until smollm2-4l replaced it, so that every projection letter exists; MiniLM's
    count is kept."""
    assert plan_run(compose_config([])).predicted == 4 * (2 * 9_216 + 2 * 6_144) + 14_976 == 137_856
    assert plan_run(compose_config(["model=minilm"])).predicted == 157_466


def test_the_golden_file_pins_exactly_these_runs():
    if REGOLDEN:
        pytest.skip("regenerating: the file is rewritten by the tests below")
    assert sorted(golden_values()["runs"]) == sorted(RUNS)


@cpu_only
@pytest.mark.parametrize("name", list(RUNS))
def test_golden_run(name, golden_run):
    result, _ = golden_run(name)
    assert result["status"] == "done"
    got = {"overrides": RUNS[name], **pinned(result)}
    if REGOLDEN:
        runs = {k: v for k, v in (golden_values() if VALUES.exists() else {}).get("runs", {}).items() if k in RUNS}
        regenerate((VALUES, {"about": "Golden values of tests/test_golden.py: change only on purpose, in a commit "
                                      "that says why (LORASWEEP_REGOLDEN=1 rewrites them)",
                             "runs": dict(sorted({**runs, name: got}.items()))}))
    want = golden_values()["runs"][name]
    assert got["overrides"] == want["overrides"], \
        f"{name}: the test's run is not the one pinned in {VALUES.name}: regenerate on purpose (see the docstring)"
    diffs = differences(got, want)
    assert not diffs, f"{name}: the run computes other numbers than its golden values:\n" + "\n".join(diffs)


# --- the result.json contract and the results-store layout -----------------------------------------

CONTRACT = GOLDEN_DIR / "result_classification_lora.json"  # the whole result.json of classification-lora
STORE = GOLDEN_DIR / "store_classification_lora.json"      # its run folder's name and every file in it
# Sections whose values legitimately differ between machines and between runs; their keys are compared:
#   timing  wall-clock seconds and examples/s
#   env     library versions, device, torch's thread count, host name, SLURM job id and restarts
#   memory  the process's peak RSS (and peak GPU memory)
#   cost    the run's work as run/cost counts it (its constants are tuned against measurements)
# Everything else is compared: floats to rel=abs=1e-6, all else exactly. That includes
# artifacts.size_bytes, which follows peft's version (its model card and adapter_config.json).
VARYING = ("timing", "env", "memory", "cost")


def store_layout(store: Path, result: dict) -> dict:
    """The results store after one run: what it holds, and every file of the run's folder, relative to it."""
    folder = store / f"{result['slug']}-{result['run_key']}"
    return {"store": sorted(p.name for p in store.iterdir()),
            "run_folder": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())}


@cpu_only
def test_result_json_and_results_store_layout_are_unchanged(golden_run):
    result, store = golden_run("classification-lora")
    layout = store_layout(store, result)
    if REGOLDEN:
        regenerate((CONTRACT, result), (STORE, layout))
    want = json.loads(CONTRACT.read_text())
    assert list(result) == list(want)  # the same sections, in the same order
    for section in VARYING:
        assert sorted(result[section]) == sorted(want[section]), f"{section}: other keys"
    kept = lambda r: {k: v for k, v in r.items() if k not in VARYING}
    diffs = differences(kept(result), kept(want))
    assert not diffs, f"result.json differs from {CONTRACT.name}:\n" + "\n".join(diffs)
    # one folder, named <slug>-<run key>, with the same files (slug and run key are pinned above)
    assert layout == json.loads(STORE.read_text())
    assert layout["store"] == [f"{want['slug']}-{want['run_key']}"]
