"""train.compile=true: the model torch.compile'd for training (run/loop.py, run/compile_check.py), a
loop option outside the run key: the same run, its numbers close to the eager run's (not equal:
inductor's dropout masks come from its own random generator), and its result says what compiled."""
import json

import pytest

from conftest import TINY_MCQ, TINY_TOPICS, compose_config, launch
from lorasweep.config.spec import from_config

TWO_STEPS = ["train.max_steps=2", "train.eval_steps=2"]


def only_result(store):
    (path,) = store.glob("*/result.json")
    return json.loads(path.read_text())


@pytest.mark.slow  # ~60 s each on 2 cores: inductor compiles the forward and backward at the first step
@pytest.mark.parametrize("task", [TINY_TOPICS + ["method=dora"], TINY_MCQ], ids=["classification-dora", "sft"])
def test_a_compiled_run_trains_the_same_run(tmp_path, monkeypatch, task):
    """Eager and compiled, each into its own store (one store would find the run done: same run key);
    the compiled one leaves inductor's generated code behind, so it did compile."""
    args = [a for a in task if not a.startswith(("train.max_steps=", "train.eval_steps="))] + TWO_STEPS
    inductor = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
    runs = {}
    for compiled in (False, True):
        cwd = tmp_path / f"compile-{compiled}"
        cwd.mkdir()
        proc = launch(args + [f"train.compile={str(compiled).lower()}"], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[compiled] = only_result(cwd / "results")
    eager, compiled = runs[False], runs[True]
    assert compiled["status"] == "done" and compiled["run_key"] == eager["run_key"]
    assert compiled["timing"]["steps"] == eager["timing"]["steps"] == 2
    # close, not equal: inductor draws dropout masks from its own generator (1.5e-4 apart seen here)
    assert compiled["metrics"]["train"]["loss"] == pytest.approx(eager["metrics"]["train"]["loss"], rel=1e-2)
    assert any(p.suffix in (".py", ".so", ".cpp") for p in inductor.rglob("*")), "nothing was compiled"
    # DoRA's weight norm traced whole (compat.traceable_dora_weight), as in a pack: no graph break
    assert "compile" not in eager and compiled["compile"]["graph_breaks"] == 0, compiled["compile"]
    assert compiled["compile"]["graphs"] >= 1


def test_compile_is_not_in_the_run_key():
    keys = {from_config(compose_config(TINY_TOPICS + [f"train.compile={v}"])).run_key for v in ("true", "false")}
    assert len(keys) == 1


@pytest.mark.parametrize("args, env, message", [
    (["train.compile=maybe"], {}, "train.compile='maybe' is invalid: true (torch.compile the model for training) "
                                  "or false (default)"),
    (["train.compile=true"], {"CXX": "no-such-compiler"},
     "train.compile=true needs a C++ compiler for torch.compile, and none was found (CXX, or g++, c++, clang++ on "
     "PATH): install one (Debian: apt-get install g++), or set train.compile=false"),
])
def test_a_compile_that_cannot_work_is_refused_before_anything_loads(tmp_path, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proc = launch(TINY_TOPICS + args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()
