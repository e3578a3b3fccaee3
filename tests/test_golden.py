"""Golden values: the exact numbers tiny seeded runs compute today, pinned to 1e-6.

Like torchtune's recipe tests, which pin their recipes' loss curves. Every golden run trains on CPU
in fp32 and learns, so that a change in what training computes moves accuracies as well as losses (a
run that does not learn pins little: test_golden_run refuses one whose test accuracy does not beat
its accuracy before training and, for 4 classes or options, chance). The data are tiny files under
tests/golden/:
- charset_train.jsonl (64 rows) and charset_test.jsonl (32): which kind of characters a text is made
  of (lower, upper, digits, symbols). A tiny bert learns it in 48 steps: one run per method (lora,
  dora, rslora, pissa, full; none, the untrained baseline at chance), each ending at its own accuracy
  (0.47 to 0.75 against chance 0.25);
- 16 of those test texts as the causal-LM tasks, trained and scored on the same rows: mcq.jsonl (the
  kind as one of 4 options), completion.jsonl ("<text> ->" then " <kind>"), tokens.jsonl (a chat reply
  that is one injected token, <upper>, whose embedding row trains); and chat.jsonl (8 rows, "Say 3"
  -> "3"). Each ends with a token accuracy (mcq: an accuracy) well above its start;
- two packs (run/pack.run_pack): three classification runs and two chat runs, each with its own rank,
  projections, lr, method and seed, each run's values pinned.
Runs of different methods end far apart: within each group their test losses differ by at least 1000
times the tolerance (test_golden_runs_of_different_methods_end_far_apart), so one method computing
another's update cannot hide inside it. Per run the test pins every curve point (step, epoch,
train_loss and each eval metric), metrics.test (every value), metrics.train.loss and
params.trainable, to rel=1e-6 and abs=1e-6. A refactor that moves code around must leave all of them
where they are. The whole file takes about 25 s of CPU.

Also pinned: the result.json contract and the results-store layout. The classification-lora run's
whole result.json (tests/golden/result_classification_lora.json, all but the fields that vary by
machine and time) and its run folder's name and files (tests/golden/store_classification_lora.json).

The runs' values live in tests/golden/values.json, beside the overrides of the run that made them
(and, for a packed run, the runs of its pack). Everything under tests/golden/ changes only on purpose,
in a commit that says why. To regenerate:

    LORASWEEP_REGOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

rewrites the files from the current code and then fails each regenerated test, saying so: review
`git diff tests/golden/` and run the tests again without the variable.

The numbers belong to this environment's torch, transformers, peft and trl: a library upgrade may
move them (regenerate then, in its own commit). They belong to the CPU too: the same code on an AMD
EPYC (AVX512, 2026-12-06) ends 1e-5 away from the CPU of 2026-12-05 after 48 steps (torch's GEMMs round
otherwise there). So a CPU whose numbers differ has its own set, tests/golden/cpu/<its model name>/
(values.json and result_classification_lora.json), made there with LORASWEEP_REGOLDEN=1; a CPU
without one is held to the plain files. They also depend on torch's thread count once runs
are this long (measured: 2 threads instead of 1 move classification-lora's last train_loss by 1.1e-5
after 48 steps, as reductions split differently), so the runs train on one thread whatever the
machine: the fixture sets it and restores the process's own after. With CUDA, training runs in bf16
on the GPU: the CPU numbers do not apply and the golden runs skip.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from lorasweep.run.lifecycle import run_config
from lorasweep.run.pack import run_pack
from lorasweep.run.plan import plan_run

from conftest import ROOT, compose_config

GOLDEN_DIR = Path(__file__).parent / "golden"


def for_this_cpu(name: str) -> Path:
    """The golden file `name` of this machine's CPU: its own set's (tests/golden/cpu/<model name>/), when
    it has one, else the plain file. With LORASWEEP_REGOLDEN=1 on a CPU that has a set, its set is rewritten."""
    from lorasweep.run.calibration import cpu_model

    own = GOLDEN_DIR / "cpu" / re.sub(r"[^A-Za-z0-9.-]+", "_", cpu_model()).strip("_") / name
    return own if own.exists() else GOLDEN_DIR / name


VALUES = for_this_cpu("values.json")
REGOLDEN = os.environ.get("LORASWEEP_REGOLDEN") == "1"
REL = ABS = 1e-6

SEED = ["train.seed=0"]


def data(fmt: str, train: str, test: str | None = None) -> list[str]:
    """A tests/golden/ data file as the task (paths relative to the project root, where data paths resolve);
    the curve evaluates on the test file."""
    test = f"tests/golden/{test or train}"
    return ["task=jsonl", f"task.format={fmt}", f"task.train=tests/golden/{train}", f"task.eval={test}",
            f"task.test={test}"]


# Which kind of characters a text is made of (lower, upper, digits, symbols): 64 rows to train on, 32
# others to test on; a tiny bert learns it from scratch in 48 steps, each method to its own accuracy.
CHARSET = ["model=tiny-bert", *data("classification", "charset_train.jsonl", "charset_test.jsonl"),
           "task.name=charset", "train.max_steps=48", "train.eval_steps=16", "train.batch_size=8", "train.lr=1e-2"]
# 16 of the test texts as SFT tasks, trained and scored on the same rows: their kind as an option, as a
# completion, as an injected token in a chat reply; and chat.jsonl (8 rows: "Say 3" -> "3")
SFT = ["train.max_steps=48", "train.eval_steps=16", "train.batch_size=4", "train.lr=1e-2", "lora.proj=qkvogud"]
KIND_TOKENS = 'tokens.new=["<lower>","<upper>","<digits>","<symbols>"]'
CHAT = ["model=tiny-qwen3", *data("chat", "chat.jsonl"), *SFT]
RUNS = {
    # per method, on classification
    "classification-lora": CHARSET + ["method=lora"] + SEED,
    "classification-dora": CHARSET + ["method=dora"] + SEED,
    "classification-rslora": CHARSET + ["method=rslora"] + SEED,
    "classification-pissa": CHARSET + ["method=pissa"] + SEED,
    "classification-full": CHARSET + ["method=full", "train.lr=3e-3"] + SEED,
    "classification-none": CHARSET + ["method=none"] + SEED,
    # per task kind, with lora; mcq's long prompt (its options listed) learns slower: 64 steps
    "mcq-lora": ["model=tiny-qwen3", *data("mcq", "mcq.jsonl"), "task.answer=option", *SFT, "train.max_steps=64",
                 "train.eval_steps=32", "method=lora"] + SEED,
    "chat-lora": CHAT + ["method=lora"] + SEED,
    "completion-lora": ["model=tiny-llama", *data("completion", "completion.jsonl"), *SFT, "method=lora"] + SEED,
    # token injection: the reply is one new token, its embedding row trained (tokens.train) from random
    "tokens-lora": ["model=tiny-qwen3", *data("chat", "tokens.jsonl"), KIND_TOKENS, *SFT, "train.lr=2e-2",
                    "method=lora"] + SEED,
}
# Packs, each trained at once (run/pack.run_pack), its runs with their own rank, projections, lr, method
# and seed: a classification pack and an SFT one. Dropout 0, as packs are tested (tests/test_pack.py).
NO_DROPOUT = ["lora.dropout=0", "+model.tiny.hidden_dropout_prob=0", "+model.tiny.attention_probs_dropout_prob=0"]
PACKS = [
    {"pack-classification-lora": CHARSET + NO_DROPOUT + ["method=lora", "lora.r=4", "lora.proj=qv"] + SEED,
     "pack-classification-dora": CHARSET + NO_DROPOUT + ["method=dora", "lora.r=4", "train.lr=2e-2", "train.seed=1"],
     "pack-classification-rslora": CHARSET + NO_DROPOUT + ["method=rslora", "lora.proj=qkvoud", "train.lr=5e-3",
                                                           "train.weight_decay=0.1"] + SEED},
    {"pack-chat-lora": CHAT + ["lora.dropout=0", "method=lora", "lora.r=4"] + SEED,
     "pack-chat-dora": CHAT + ["lora.dropout=0", "method=dora", "lora.proj=qv", "train.lr=2e-2", "train.seed=1"]},
]
PACK = {name: list(pack) for pack in PACKS for name in pack}  # each packed run -> the names of its pack
GOLDEN = {**RUNS, **{name: overrides for pack in PACKS for name, overrides in pack.items()}}

cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                              reason="golden values are CPU fp32 numbers; with CUDA, training runs in bf16 on the GPU")


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    """name -> (result as written to result.json, the run's results store): each run once per module,
    each in a results store of its own; a pack's runs all at once, in one store. On one thread (see the
    module docstring), the process's own count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    done: dict[str, tuple[dict, Path]] = {}

    def read(store: Path, result: dict) -> dict:
        return json.loads((store / f"{result['slug']}-{result['run_key']}" / "result.json").read_text())

    def get(name: str) -> tuple[dict, Path]:
        if name in done:
            return done[name]
        if name in PACK:
            store = tmp_path_factory.mktemp("pack") / "results"
            results = run_pack([compose_config(GOLDEN[n] + [f"results_dir={store}"]) for n in PACK[name]])
            done.update({n: (read(store, result), store) for n, result in zip(PACK[name], results)})
        else:
            store = tmp_path_factory.mktemp(name) / "results"
            done[name] = read(store, run_config(compose_config(RUNS[name] + [f"results_dir={store}"]))), store
        return done[name]
    yield get
    torch.set_num_threads(threads)


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
    assert sorted(golden_values()["runs"]) == sorted(GOLDEN)


CHANCE = 0.25  # charset: 4 classes; mcq.jsonl: 4 options


def headline_accuracy(metrics: dict) -> float:
    """A classification or mcq run's accuracy; a generation run's token accuracy."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics["token_accuracy"]


def learned(result: dict) -> list[str]:
    """Why a trained run did not learn: its test accuracy must beat its accuracy before training (the
    curve's step 0), and chance (1 in 4) where it picks one of 4 classes or options."""
    if result["config"]["method"] == "none":
        return []
    test, before = headline_accuracy(result["metrics"]["test"]), headline_accuracy(result["curve"][0])
    out = [f"test accuracy {test:.3f} is not above {before:.3f}, before training"] if test <= before else []
    if "accuracy" in result["metrics"]["test"] and test <= CHANCE:
        out.append(f"test accuracy {test:.3f} is not above chance ({CHANCE})")
    return out


@cpu_only
@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_run(name, golden_run):
    result, _ = golden_run(name)
    assert result["status"] == "done"
    assert not learned(result), f"{name} does not learn, so its golden values would pin little: {learned(result)}"
    got = {"overrides": GOLDEN[name], **({"pack": PACK[name]} if name in PACK else {}), **pinned(result)}
    if REGOLDEN:
        runs = {k: v for k, v in (golden_values() if VALUES.exists() else {}).get("runs", {}).items() if k in GOLDEN}
        regenerate((VALUES, {"about": "Golden values of tests/test_golden.py: change only on purpose, in a commit "
                                      "that says why (LORASWEEP_REGOLDEN=1 rewrites them)",
                             "runs": dict(sorted({**runs, name: got}.items()))}))
    want = golden_values()["runs"][name]
    assert (got["overrides"], got.get("pack")) == (want["overrides"], want.get("pack")), \
        f"{name}: the test's run is not the one pinned in {VALUES.name}: regenerate on purpose (see the docstring)"
    diffs = differences(got, want)
    assert not diffs, f"{name}: the run computes other numbers than its golden values:\n" + "\n".join(diffs)


# Runs that train differently must end far apart, so that a method silently computing another's update
# (dora as plain lora, rslora's scale as lora's, pissa's init as lora's) moves golden values by far more
# than their tolerance: within each group, every two runs' test losses differ by at least 1000 times it.
APART = [["classification-lora", "classification-dora", "classification-rslora", "classification-pissa",
          "classification-full"], *(list(pack) for pack in PACKS)]


def test_golden_runs_of_different_methods_end_far_apart():
    if REGOLDEN:
        pytest.skip("regenerating: the file is rewritten by test_golden_run")
    loss = {name: run["metrics.test"]["loss"] for name, run in golden_values()["runs"].items()}
    close = [f"{a} {loss[a]!r} and {b} {loss[b]!r}" for group in APART for i, a in enumerate(group)
             for b in group[i + 1:] if abs(loss[a] - loss[b]) < 1000 * (ABS + REL * abs(loss[b]))]
    assert not close, "golden runs of different methods end too close: " + "; ".join(close)


# --- the result.json contract and the results-store layout -----------------------------------------

CONTRACT = for_this_cpu("result_classification_lora.json")  # the whole result.json of classification-lora
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
