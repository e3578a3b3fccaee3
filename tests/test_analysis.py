"""analysis/: load result JSONs, tables with hand-computed values, the CLI end to end. No torch."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
from analysis import tables as T
from analysis.load import load_results
BUDGET = 4500


def result(method: str = "lora", r: int | None = 4, proj: str | None = "qv", seed: int = 0,
           acc: float | None = 0.5, se: float = 0.05, trainable: int = 1000, status: str = "done") -> dict:
    """A valid schema-1 result dict (the fields analysis reads), keyed by its setting."""
    key = f"{method}-{r}-{proj}-{seed}"
    cfg = {"model": {"name": "m", "family": "bert"}, "method": method,
           "task": {"name": "t", "kind": "classification"}, "train": {"lr": 1e-3, "seed": seed}}
    if method in ("lora", "dora"):
        cfg["lora"] = {"r": r, "alpha": 2.0 * r, "dropout": 0.05, "proj": proj}
    res = {"schema": 1, "run_key": key, "slug": key, "status": status, "reason": "", "config": cfg,
           "budget": {"max_trainable": None, "r_auto": False},
           "params": {"trainable": trainable, "total": 100_000, "predicted": trainable}}
    if status == "skipped_budget":  # as run.py writes it: no metrics, only the predicted count
        res["params"] = {"trainable": trainable, "predicted": trainable}
    elif acc is not None:
        res["metrics"] = {"test": {"accuracy": acc, "accuracy_se": se, "n": 100, "loss": 1.0},
                          "train": {"loss": 1.0}}
        res["curve"] = [{"step": 0, "accuracy": 0.1}, {"step": 10, "accuracy": acc}]
        res["timing"] = {"train_s": 2.0, "total_s": 3.0}
        res["memory"] = {"peak_rss_mb": 500.0}
        res["artifacts"] = {"kind": "adapter", "path": "adapter", "size_bytes": 10 * trainable}
    return res


RUNS = [
    result("none", None, None, 0, 0.30, trainable=0), result("none", None, None, 1, 0.34, trainable=0),
    result(r=2, seed=0, acc=0.55, trainable=1000), result(r=2, seed=1, acc=0.57, trainable=1000),
    # `vq` is the same projection set as `qv`: it must land in the qv cell
    result(r=4, proj="vq", seed=0, acc=0.60, trainable=2000), result(r=4, seed=1, acc=0.62, trainable=2000),
    result(r=4, seed=2, acc=0.67, trainable=2000),
    result(r=4, seed=3, acc=0.10, trainable=2000, status="pruned"),  # never mixed into the mean
    result(r=8, acc=0.64, se=0.048, trainable=4000),  # one seed: its own binomial SE
    result(r=4, proj="qkvo", acc=0.61, trainable=5000),  # dominated by r=8 qv (0.64 at 4000)
    result(r=16, acc=None, trainable=8000, status="failed"),
    result(r=64, trainable=32000, status="skipped_budget"),
]
BAD = {"corrupt": "{not json", "truncated": json.dumps(result())[:150], "list": "[1, 2]",
       "foreign": '{"hello": 1}', "schema2": json.dumps({**result(), "schema": 2})}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """a/ holds every run and the bad files; b/ repeats one run key with another accuracy."""
    for i, res in enumerate(RUNS):
        _write(tmp_path / "a" / f"run{i:02d}" / "result.json", json.dumps(res))
    for name, text in BAD.items():
        _write(tmp_path / "a" / name / "result.json", text)
    _write(tmp_path / "b" / "copy" / "result.json", json.dumps(result(r=2, seed=0, acc=0.99, trainable=1000)))
    return tmp_path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _load(store: Path):
    warn = io.StringIO()
    df, rep = load_results([store / "a", str(store / "b" / "*")], warn=warn)
    return df, rep, warn.getvalue().splitlines()


def _cell(cells, **where):
    m = cells
    for k, v in where.items():
        m = m[m[k] == v]
    assert len(m) == 1, where
    return m.iloc[0]


def test_load_counts_duplicates_and_one_warning_per_bad_file(store):
    df, rep, lines = _load(store)
    assert (rep.files, rep.loaded, rep.duplicates, rep.n_skipped) == (18, 12, 1, 5)
    assert len(lines) == 5
    for name in BAD:
        assert sum(str(store / "a" / name / "result.json") in line for line in lines) == 1
    assert T.status_counts(df) == {"done": 9, "failed": 1, "pruned": 1, "skipped_budget": 1, "diverged": 0}
    # the duplicate in b/ is ignored (a/ is read first); `vq` became canonical `qv`
    assert df.loc[df.run_key == "lora-2-qv-0", "accuracy"].item() == 0.55
    assert set(df["proj"].dropna()) == {"qv", "qkvo"}
    assert df.loc[df.run_key == "lora-64-qv-0", "trainable"].item() == 32000


def test_cell_means_and_standard_errors(store):
    df, _, _ = _load(store)
    cells = T.cell_stats(df)
    assert len(cells) == 5  # none, r2, r4, r8, r4 qkvo: failed/skipped cells have no mean
    none = _cell(cells, method="none")
    assert none["accuracy"] == pytest.approx(0.32) and none["n_seeds"] == 2
    assert none["accuracy_se"] == pytest.approx(0.02)  # std(.30,.34)=.028284; /sqrt(2)
    r4 = _cell(cells, r=4, proj="qv")
    assert r4["n_seeds"] == 3 and r4["accuracy"] == pytest.approx(0.63)  # pruned 0.10 left out
    assert r4["accuracy_se"] == pytest.approx(math.sqrt(0.0026 / 2 / 3))  # squares .0009+.0001+.0016
    r8 = _cell(cells, r=8)
    assert (r8["n_seeds"], r8["accuracy"], r8["accuracy_se"]) == (1, 0.64, 0.048)
    assert _cell(cells, r=2)["accuracy_se"] == pytest.approx(0.01)


def test_rank_projection_method_tables(store):
    df, _, _ = _load(store)
    rank = T.rank_table(df)
    per = ["", " ±", " n", " trainable"]
    assert list(rank.columns) == [f"lora/{p}{x}" for p in ("qkvo", "qv") for x in per]
    assert list(rank.index) == [2, 4, 8] and rank.index.dtype == "int64"  # not 2.0 (none runs have no r)
    assert rank.loc[4, "lora/qv"] == pytest.approx(0.63) and rank.loc[4, "lora/qkvo"] == 0.61
    # the r=4 qv cell: 3 seeds, SE across them (as in the cells table)
    assert rank.loc[4, "lora/qv n"] == 3
    assert rank.loc[4, "lora/qv ±"] == pytest.approx(_cell(T.cell_stats(df), r=4, proj="qv")["accuracy_se"])
    assert rank.loc[4, "lora/qv trainable"] == _cell(T.cell_stats(df), r=4, proj="qv")["trainable"]
    assert math.isnan(rank.loc[2, "lora/qkvo"])
    # r varies among the qv runs of this store: the projection table keeps it as a key (one cell a
    # row, n_seeds counts seeds), instead of pooling r=2, 4 and 8 into one "qv" row
    proj = T.projection_table(df)
    assert list(proj.columns[:4]) == ["method", "proj", "r", "alpha"]
    qv4 = _cell(proj, proj="qv", r=4)
    assert qv4["n_seeds"] == 3 and qv4["accuracy"] == pytest.approx(0.63)
    assert len(proj) == 4  # qkvo r4, qv r2, r4, r8
    assert T.rank_proj_pivot(df).loc[8, "qv"] == 0.64
    meth = T.method_table(df)
    assert list(meth["method"]) == ["none", "lora", "lora", "lora", "lora"]
    assert list(meth["r"].iloc[1:]) == [2, 4, 4, 8]
    assert meth.iloc[0]["trainable"] == 0 and meth.iloc[0]["adapter_bytes"] == 0
    assert _cell(meth, r=4, proj="qv")["n_seeds"] == 3
    assert list(T.alpha_table(df)["alpha"]) == [4.0, 8.0, 8.0, 16.0]  # r=4: qv and qkvo are two cells


def test_tables_of_one_sweep_have_one_row_per_setting(store):
    """A method comparison alone: nothing varies within a method, so one row each; a projection
    sweep alone: one row per proj; a second lr among the lora runs becomes a column of its own."""
    runs = [result("none", None, None, s, 0.3, trainable=0) for s in (0, 1)] + \
        [result("lora", 8, "qv", s, 0.6 + s / 100) for s in (0, 1)] + [result("dora", 8, "qv", 0, 0.7)]
    df = _frame(store, runs)
    meth = T.method_table(df)
    assert list(meth.columns[:2]) == ["method", "accuracy"]
    assert list(meth["method"]) == ["none", "lora", "dora"] and list(meth["n_seeds"]) == [2, 2, 1]
    faster = result("lora", 8, "qv", 0, 0.5)
    faster["config"]["train"]["lr"], faster["run_key"] = 1e-2, "fast"
    df = _frame(store, runs + [faster, result("lora", 8, "qkvo", 0, 0.65)])
    assert list(T.projection_table(df).columns[:3]) == ["method", "proj", "lr"]
    rank = T.rank_table(df)
    assert {"lora/qv lr=0.001", "lora/qv lr=0.01", "lora/qkvo lr=0.001", "dora/qv lr=0.001"} <= set(rank.columns)
    assert rank.loc[8, "lora/qv lr=0.01"] == 0.5 and rank.loc[8, "lora/qv lr=0.001 n"] == 2


def test_a_bf16_base_is_its_own_row_beside_the_float32_one(store):
    """Runs that differ only in model.dtype are two settings, never two seeds of one."""
    bf16 = result("lora", 8, "qv", 0, 0.58)
    bf16["config"]["model"]["dtype"], bf16["run_key"] = "bfloat16", "bf16"
    df = _frame(store, [result("lora", 8, "qv", 0, 0.6), bf16])
    meth = T.method_table(df)
    assert list(meth["model"]) == ["m", "m (bfloat16)"] and list(meth["n_seeds"]) == [1, 1]
    assert list(meth["accuracy"]) == [0.6, 0.58]


def test_runs_that_differ_in_any_other_setting_are_never_seeds_of_one_cell(store):
    """Two runs of seed 0 that differ in train.max_steps (or model.layers, task.max_test: any
    run-defining setting outside the named columns) are two cells, labelled by that setting; seeds
    of one setting still pool."""
    def run(seed: int, steps: int, acc: float) -> dict:
        res = result("lora", 8, "qv", seed, acc)
        res["config"]["train"]["max_steps"], res["run_key"] = steps, f"s{seed}-{steps}"
        return res

    df = _frame(store, [run(0, 5, 0.30), run(0, 250, 0.60), run(1, 250, 0.64), result("none", None, None, 0, 0.2)])
    cells = T.cell_stats(df)
    assert "train.max_steps" in cells.columns
    assert (_cell(cells, **{"train.max_steps": 5})[["accuracy", "n_seeds"]].tolist()) == [0.30, 1]
    assert (_cell(cells, **{"train.max_steps": 250})[["accuracy", "n_seeds"]].tolist()) == [0.62, 2]
    rank = T.rank_table(df)
    assert rank.loc[8, "lora/qv train.max_steps=5"] == 0.30 and rank.loc[8, "lora/qv train.max_steps=250 n"] == 2
    assert len(T.budget_view(df, None)) == 3
    # settings every run shares are no key: a store of one setting keeps the named keys only
    assert T.cell_keys(df[df["train.max_steps"] == 250]) == T.CELL_KEYS


def _frame(root: Path, runs: list[dict]):
    folder = root / f"set{len(list(root.iterdir()))}"
    for i, res in enumerate(runs):
        _write(folder / f"run{i:02d}" / "result.json", json.dumps(res))
    df, _ = load_results([folder], warn=io.StringIO())
    return df


def test_budget_view_keeps_over_budget_cells_and_picks_best(store):
    df, _, _ = _load(store)
    view = T.budget_view(df, BUDGET)
    assert len(view) == 7  # every cell, failed and skipped_budget included
    over = view[~view["fits"]]
    assert sorted(over["trainable"]) == [5000, 8000, 32000]
    assert _cell(view, r=64)["statuses"] == "skipped_budget:1"
    assert _cell(view, r=4, proj="qv")["statuses"] == "done:3,pruned:1"
    best = T.best_within_budget(view)
    assert (best["r"], best["proj"], best["accuracy"]) == (8, "qv", 0.64)
    assert T.best_within_budget(T.budget_view(df, 1500))["r"] == 2
    assert T.best_within_budget(T.budget_view(df, -1)) is None


def test_pareto_front(store):
    df, _, _ = _load(store)
    cells = T.pareto_front(T.cell_stats(df))
    on = {c.method if c.method == "none" else (c.r, c.proj) for c in cells[cells.pareto].itertuples()}
    assert on == {"none", (2, "qv"), (4, "qv"), (8, "qv")}  # r=4 qkvo: 0.61 at 5000 < 0.64 at 4000
    import pandas as pd  # ties: equal cells are both on the front, a worse one at equal cost is not
    tie = pd.DataFrame({"accuracy": [0.5, 0.5, 0.4, 0.6], "trainable": [10, 10, 10, 20]})
    assert list(T.pareto_front(tie)["pareto"]) == [True, True, False, True]


def test_significance_against_none(store):
    df, _, _ = _load(store)
    sig = T.significance(df)
    r8 = _cell(sig, r=8)  # one seed: normal test on the SEs
    assert r8["test"] == "normal" and r8["diff"] == pytest.approx(0.32)
    assert r8["p"] == pytest.approx(math.erfc(0.32 / math.hypot(0.048, 0.02) / math.sqrt(2)))
    r4 = _cell(sig, r=4, proj="qv")
    stats = pytest.importorskip("scipy.stats")
    assert r4["test"] == "welch"
    assert r4["p"] == pytest.approx(stats.ttest_ind([0.60, 0.62, 0.67], [0.30, 0.34], equal_var=False).pvalue)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_end_to_end(store, tmp_path):
    out = tmp_path / "rep"
    p = _cli(str(store / "a"), str(store / "b"), "--budget", str(BUDGET), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert str(out) in p.stdout and p.stderr.count("warning: skipped") == 5
    for name in ("report.md", "report.html", "runs.csv", "cells.csv", "cells.tex", "rank.csv", "rank.tex",
                 "budget.csv", "method.tex", "pareto.png", "curves.png", "rank_proj.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "| 4 | 0.61 | 0.63 |" in md  # rank table row r=4: lora/qkvo, lora/qv
    assert "| none |  |  |  | 0.32 | 0.02 | 2 | 0 |" in md  # method table: r, alpha, proj vary among lora runs
    assert "| lora | 4 | 8 | qv | 0.63 | 0.02082 | 3 | 2,000 |" in md
    assert "done: 9, failed: 1, pruned: 1, skipped over budget: 1" in md
    assert "cells over budget: 3 (budget 4,500 trainable)" in md and "skipped files: 5" in md
    assert "best within budget: model=m, task=t, method=lora, r=8" in md and "![pareto](pareto.png)" in md
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    # the html tables read like the markdown ones: separators and yes/no, not 4.5e+03 and True
    assert "<td>0.61</td>" in page and "<td>yes</td>" in page and "e+0" not in page and "True" not in page


def test_cli_where_and_empty_input(store, tmp_path):
    p = _cli(str(store / "a"), "--where", "method == 'none'", "--out", str(tmp_path / "w"), "--no-plots")
    assert p.returncode == 0, p.stderr
    assert "| none | 0.32 |" in (tmp_path / "w" / "report.md").read_text()
    p = _cli(str(store / "a"), "--group-by", "bogus", "--out", str(tmp_path / "g"))
    assert p.returncode == 2 and "--group-by ['bogus']" in p.stderr
    (tmp_path / "empty").mkdir()
    p = _cli(str(tmp_path / "empty"), "--out", str(tmp_path / "e"))
    assert p.returncode == 2 and "no readable result.json" in p.stderr and not (tmp_path / "e").exists()


@pytest.mark.parametrize("args, said", [
    (["--where", "task==wordnet"], "--where 'task==wordnet' is not a query on the run table: UndefinedVariableError"),
    (["--where", "task == "], "--where 'task == ' is not a query on the run table: SyntaxError"),
    (["--budget", "-5"], "argument --budget: '-5' is not a cap on trainable parameters: give a whole number 1 or more, "
                         "e.g. 1000000 or 1M"),
    (["--budget", "1.5"], "argument --budget: '1.5' is not a cap"),
    (["--budget", "1X"], "argument --budget: '1X' is not a cap"),
    (["--out", "{file}"], "--out {file} is a file; give a folder"),
    (["{missing}"], "{missing}: no such file or folder"),
])
def test_cli_says_a_bad_argument_in_one_line(store, tmp_path, args, said):
    (tmp_path / "notes.txt").write_text("mine")
    where = {"file": str(tmp_path / "notes.txt"), "missing": str(tmp_path / "nope")}
    args = [a.format(**where) for a in args]
    p = _cli(*([] if args[0] == where["missing"] else [str(store / "a")]), *args, "--no-plots")
    assert p.returncode == 2 and said.format(**where) in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("written", ["4500", "4.5k", "4.5K", "4_500"])
def test_cli_takes_a_budget_as_researchers_write_it(store, tmp_path, written):
    p = _cli(str(store / "a"), "--budget", written, "--out", str(tmp_path / "r"), "--no-plots")
    assert p.returncode == 0, p.stderr
    assert "(budget 4,500 trainable)" in (tmp_path / "r" / "report.md").read_text()


def _generation(r: int, token_accuracy: float) -> dict:
    """A completion run's result as lorasweep writes one: token accuracy is its objective; no accuracy."""
    res = result(r=r, acc=None, trainable=1000 * r)
    res["config"]["task"]["kind"] = "completion"
    res["metrics"] = {"test": {"loss": 2.0, "token_accuracy": token_accuracy, "token_accuracy_se": 0.01,
                               "exact_match": 0.0, "exact_match_se": 0.0, "n": 50, "n_tokens": 900}}
    res["objective"] = {"name": "test.token_accuracy", "value": token_accuracy, "direction": "maximize"}
    return res


def test_a_generation_sweep_is_reported_by_its_objective_token_accuracy(tmp_path):
    """Chat and completion runs have no accuracy: the report's default metric is their objective,
    where before `python -m analysis results/` refused them until given --metric token_accuracy."""
    from analysis.__main__ import main
    for r, acc in ((2, 0.31), (4, 0.42)):
        _write(tmp_path / "gen" / f"r{r}" / "result.json", json.dumps(_generation(r, acc)))
    assert main([str(tmp_path / "gen"), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "r=4, alpha=8, dropout=0.05, proj=qv, lr=0.001: token_accuracy 0.42 ± 0.01, trainable 4,000" in md, md
    p = _cli(str(tmp_path / "gen"), "--metric", "accuracy", "--out", str(tmp_path / "x"), "--no-plots")
    assert p.returncode == 2 and not (tmp_path / "x").exists()
    assert ("error: metric 'accuracy' is not in the results; test metrics found: exact_match, test_loss, "
            "token_accuracy (--metric NAME)") in p.stderr.splitlines(), p.stderr


def test_generation_runs_beside_classification_ones_are_named_with_how_to_report_them(tmp_path):
    """A store of both kinds is reported by accuracy (their objectives differ); the completion runs,
    which have none, are in the tables without a value, and a note per task says how to report them."""
    for r, acc in ((2, 0.31), (4, 0.42)):
        gen = _generation(r, acc)
        gen["config"]["task"]["name"], gen["run_key"] = "nl2bash", f"gen-{r}"
        _write(tmp_path / "s" / f"gen{r}" / "result.json", json.dumps(gen))
    cls = result(r=8, acc=0.64)
    cls["objective"] = {"name": "test.accuracy", "value": 0.64, "direction": "maximize"}  # as lorasweep writes it
    _write(tmp_path / "s" / "cls" / "result.json", json.dumps(cls))
    p = _cli(str(tmp_path / "s"), "--out", str(tmp_path / "rep"), "--no-plots")
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == ["note: 2 runs of task nl2bash have no accuracy: their objective is token_accuracy "
                                     "(--where \"task == 'nl2bash'\" --metric token_accuracy reports them)"]
    assert ": accuracy 0.64 ± 0.05, trainable 1,000" in (tmp_path / "rep" / "report.md").read_text()
    p = _cli(str(tmp_path / "s"), "--where", "task == 'nl2bash'", "--metric", "token_accuracy",
             "--out", str(tmp_path / "gen"), "--no-plots")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert ": token_accuracy 0.42 ± 0.01, trainable 4,000" in (tmp_path / "gen" / "report.md").read_text()


def test_a_store_without_a_finished_run_says_so_in_one_line(tmp_path):
    _write(tmp_path / "s" / "a" / "result.json", json.dumps(result(r=16, acc=None, status="failed")))
    _write(tmp_path / "s" / "b" / "result.json", json.dumps(result(r=64, status="skipped_budget")))
    p = _cli(str(tmp_path / "s"), "--out", str(tmp_path / "x"), "--no-plots")
    assert p.returncode == 2 and not (tmp_path / "x").exists()
    assert p.stderr.splitlines() == ["error: no run has test metrics yet (2 runs: 1 failed, 1 skipped_budget): the "
                                     "tables need a finished run"], p.stderr


SPELLINGS = ["4500", "4.5k", "1M", "1e6", "1E6", "0.1k", "2B", "1_000_000", " 1M ", "1.5", "0.1234k", "0", "-1M",
             "1X", "M", "", "1,000", "inf", "nan"]


def test_analysis_takes_budgets_as_a_runs_budget_max_trainable_does():
    """analysis keeps its own twin of lorasweep's parser (it imports nothing of src/): the same counts."""
    from analysis.__main__ import parameter_count as analysis_count
    from lorasweep.config.checks import parameter_count
    assert [analysis_count(s) for s in SPELLINGS] == [parameter_count(s) for s in SPELLINGS]
    assert [parameter_count(s) for s in SPELLINGS[:8]] == [4500, 4500, 10**6, 10**6, 10**6, 100, 2 * 10**9, 10**6]


def test_analysis_knows_the_adapter_methods_lorasweep_runs():
    """analysis/load.py's own list (it imports nothing of src/): a method missing there would lose its
    runs' r, alpha and proj in every table."""
    from analysis.load import ADAPTER_METHODS as analysis_methods
    from lorasweep.config.spec import ADAPTER_METHODS
    assert analysis_methods == ADAPTER_METHODS


def test_analysis_does_not_import_torch_or_lorasweep():
    """It reads result files only (docs/ARCHITECTURE.md). Run without the tests' hooks (PYTHONPATH),
    which import lorasweep into every process the tests start."""
    code = ("import analysis.__main__, analysis.report, analysis.plots, sys; "
            "assert not [m for m in sys.modules if m == 'torch' or m.startswith('lorasweep')]")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def _dropout_lr(dropout: float, lr: float, seed: int, acc: float, status: str = "done") -> dict:
    """A lora r=8 qv run of a dropout x lr sweep."""
    res = result(r=8, seed=seed, acc=acc, trainable=4000, status=status)
    res["config"]["lora"]["dropout"], res["config"]["train"]["lr"] = dropout, lr
    res["run_key"] = res["slug"] = f"d{dropout}-lr{lr}-s{seed}"
    return res


DROPOUT_LR = [_dropout_lr(0.0, 1e-4, 0, 0.50), _dropout_lr(0.0, 1e-4, 1, 0.54),
              _dropout_lr(0.0, 1e-3, 0, 0.60), _dropout_lr(0.0, 1e-3, 1, 0.64),
              _dropout_lr(0.1, 1e-4, 0, 0.55), _dropout_lr(0.1, 1e-4, 1, 0.57),
              _dropout_lr(0.1, 1e-3, 0, 0.70), _dropout_lr(0.1, 1e-3, 1, 0.66),
              _dropout_lr(0.1, 1e-3, 2, None, status="failed"),  # counted, never averaged in
              result("none", None, None, 0, 0.30, trainable=0)]


def test_cli_dropout_lr_table_and_group_by(tmp_path):
    """README: a dropout x lr table; `--group-by r,proj` sets the cells table's keys."""
    from analysis.__main__ import main
    import pandas as pd

    for i, res in enumerate(DROPOUT_LR):
        _write(tmp_path / "sweep" / f"run{i:02d}" / "result.json", json.dumps(res))
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "dropout_lr.csv")
    assert list(table.columns) == ["method", "dropout", "lr", "accuracy", "accuracy_se", "n_seeds", "trainable"]
    rows = [(m, d, lr, n) for m, d, lr, n in zip(table["method"], table["dropout"], table["lr"], table["n_seeds"])]
    assert rows[:4] == [("lora", 0.0, 1e-4, 2), ("lora", 0.0, 1e-3, 2), ("lora", 0.1, 1e-4, 2), ("lora", 0.1, 1e-3, 2)]
    assert rows[4][0] == "none" and math.isnan(rows[4][1]) and rows[4][2:] == (1e-3, 1)
    # mean over seeds and its SE across seeds (std / sqrt(2)); one run keeps its own binomial SE
    assert list(table["accuracy"]) == pytest.approx([0.52, 0.62, 0.56, 0.68, 0.30])
    assert list(table["accuracy_se"]) == pytest.approx([0.02, 0.02, 0.01, 0.02, 0.05])
    assert "## Dropout and learning rate" in (tmp_path / "rep" / "report.md").read_text()
    assert "| lora | 0.1 | 0.001 | 0.68 | 0.02 | 2 | 4,000 |" in (tmp_path / "rep" / "report.md").read_text()
    # the cells table keeps dropout and lr apart by default...
    cells = pd.read_csv(tmp_path / "rep" / "cells.csv")
    assert len(cells) == 5 and {"dropout", "lr", "r", "proj", "method"} <= set(cells.columns)
    # ...and --group-by r,proj pools them: one cell per (r, proj), its mean over all 8 done runs
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "g"), "--no-plots", "--group-by", "r,proj"]) == 0
    cells = pd.read_csv(tmp_path / "g" / "cells.csv")
    assert list(cells.columns) == ["r", "proj", "accuracy", "accuracy_se", "n_seeds", "trainable", "pareto"]
    lora = cells[cells["proj"] == "qv"].iloc[0]
    accs = [0.50, 0.54, 0.60, 0.64, 0.55, 0.57, 0.70, 0.66]
    mean = sum(accs) / 8
    assert len(cells) == 2 and (lora["r"], lora["n_seeds"], lora["trainable"]) == (8, 8, 4000)
    assert lora["accuracy"] == pytest.approx(mean)
    assert lora["accuracy_se"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accs) / 7 / 8))
    none = cells[cells["proj"].isna()].iloc[0]
    assert math.isnan(none["r"]) and none["accuracy"] == pytest.approx(0.30) and none["n_seeds"] == 1


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, by file name, before it is closed."""
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def record(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def test_plots_show_the_tables_values(store, tmp_path, figures):
    """The Pareto plot's points, front and budget line, the curves and the heatmap's cells are the
    values of the tables written beside them from the same results."""
    from analysis.__main__ import main
    import pandas as pd

    out = tmp_path / "rep"
    assert main([str(store / "a"), "--budget", str(BUDGET), "--out", str(out)]) == 0
    assert set(figures) == {"pareto.png", "curves.png", "rank_proj.png"}
    cells = pd.read_csv(out / "cells.csv")
    placed = cells[cells["trainable"] > 0].sort_values("trainable")  # log x: method=none cannot be placed
    assert list(placed["trainable"]) == [1000, 2000, 4000, 5000]

    ax = figures["pareto.png"].axes[0]
    (points,) = ax.containers  # the cells with their error bars
    data, _, (bars,) = points.lines
    shown = sorted(zip(data.get_xdata(), data.get_ydata()))
    assert shown == [pytest.approx((t, a)) for t, a in zip(placed["trainable"], placed["accuracy"])]
    spans = sorted((s[0][0], s[0][1], s[1][1]) for s in bars.get_segments())
    assert spans == [pytest.approx((t, a - se, a + se)) for t, a, se in
                     zip(placed["trainable"], placed["accuracy"], placed["accuracy_se"])]
    lines = {line.get_label(): line for line in ax.lines}
    front = placed[placed["pareto"]]
    assert list(lines["Pareto front"].get_xdata()) == list(front["trainable"]) == [1000, 2000, 4000]
    assert list(lines["Pareto front"].get_ydata()) == pytest.approx(list(front["accuracy"]))
    assert list(lines["Pareto front"].get_ydata()) == pytest.approx([0.56, 0.63, 0.64])
    assert list(lines[f"budget {BUDGET:,}"].get_xdata()) == [BUDGET, BUDGET]
    assert ax.get_xscale() == "log"

    # accuracy vs step, per setting, mean over the done seeds (the pruned r=4 run is left out);
    # in these results each run's last curve point is its test accuracy, so it ends on the cell's mean
    ax = figures["curves.png"].axes[0]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    def cell(**where):
        return _cell(cells, **where)["accuracy"]
    assert curves == {"none": ([0, 10], pytest.approx([0.1, cell(method="none")])),
                      "lora qkvo r=4": ([0, 10], pytest.approx([0.1, cell(proj="qkvo")])),
                      "lora qv r=2": ([0, 10], pytest.approx([0.1, cell(r=2, proj="qv")])),
                      "lora qv r=4": ([0, 10], pytest.approx([0.1, cell(r=4, proj="qv")])),
                      "lora qv r=8": ([0, 10], pytest.approx([0.1, cell(r=8, proj="qv")]))}
    assert curves["lora qv r=4"][1][1] == pytest.approx(0.63)

    # the heatmap: the r x projection table, cell by cell, and its values written in the cells
    ax = figures["rank_proj.png"].axes[0]
    pivot = pd.read_csv(out / "rank_proj.csv", index_col=0)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(pivot.columns) == ["qkvo", "qv"]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(r) for r in pivot.index] == ["2", "4", "8"]
    grid = ax.images[0].get_array()
    assert grid.mask.tolist() == pivot.isna().to_numpy().tolist()
    assert grid.filled(-1).ravel().tolist() == pytest.approx(pivot.fillna(-1).to_numpy().ravel().tolist())
    texts = sorted((int(t.get_position()[1]), int(t.get_position()[0]), t.get_text()) for t in ax.texts)
    assert texts == [(i, j, f"{v:.3f}") for i, row in enumerate(pivot.to_numpy()) for j, v in enumerate(row)
                     if not math.isnan(v)]
    assert [t for _, _, t in texts] == ["0.560", "0.610", "0.630", "0.640"]


def _report(tmp_path: Path, runs: list[dict], name: str) -> tuple[str, Path]:
    from analysis.__main__ import main

    for i, res in enumerate(runs):
        _write(tmp_path / name / f"run{i:02d}" / "result.json", json.dumps(res))
    out = tmp_path / f"{name}-report"
    assert main([str(tmp_path / name), "--out", str(out), "--no-plots"]) == 0
    return (out / "report.md").read_text(), out


FACTOR_TITLES = {"rank": "## Rank (rows r", "projection": "## Projections", "alpha": "## Alpha",
                 "dropout_lr": "## Dropout and learning rate"}


def test_report_shows_a_factor_table_only_when_its_factor_varies(tmp_path):
    """The design card's sweep (lora.r=4,8,16 x lora.proj=qk,qkvo,qvkogdu: alpha = 2 x r, one dropout,
    one lr): rank and projection tables, no alpha or dropout-and-lr table repeating the same nine rows,
    and one line with the settings that were fixed. An alpha ablation at one rank and projection: the
    alpha table alone."""
    card = [result(r=r, proj=p, acc=0.5 + r / 100 + len(p) / 100) for r in (4, 8, 16) for p in ("qk", "qkvo", "qvkogdu")]
    md, out = _report(tmp_path, card, "card")
    shown = {name for name, title in FACTOR_TITLES.items() if title in md}
    assert shown == {"rank", "projection"}
    assert "- fixed settings: model=m, task=t, method=lora, alpha=2 x r, dropout=0.05, lr=0.001\n" in md
    assert not (out / "alpha.csv").exists() and not (out / "dropout_lr.tex").exists()
    assert (out / "projection.csv").exists() and "## Rank x projection" in md and "## Cells" in md

    alphas = []
    for scale in (0.5, 1, 2):
        res = result(r=8, acc=0.5 + scale / 10)
        res["config"]["lora"]["alpha"], res["run_key"] = 8 * scale, f"alpha{scale}"
        alphas.append(res)
    md, out = _report(tmp_path, alphas + [result("none", None, None, 0, 0.3, trainable=0)], "alpha")
    assert {name for name, title in FACTOR_TITLES.items() if title in md} == {"alpha"}
    assert list(pd.read_csv(out / "alpha.csv")["alpha"]) == [4.0, 8.0, 16.0]
    # with a method=none baseline, method varies; r, dropout, proj hold among the adapter runs, lr among
    # the trained ones
    assert "- fixed settings: model=m, task=t, r=8, dropout=0.05, proj=qv, lr=0.001\n" in md
    assert "## Methods" in md and "## Against the method=none baseline" in md


def test_fixed_settings_and_what_varies():
    df = pd.DataFrame({"model": ["m"] * 3, "task": ["t"] * 3, "method": ["none", "lora", "full"],
                       "r": [None, 8, None], "alpha": [None, 16.0, None], "dropout": [None, 0.1, None],
                       "proj": [None, "qv", None], "lr": [1e-3, 2e-4, 2e-4]})
    assert T.fixed_settings(df) == {"model": "m", "task": "t", "r": "8", "alpha": "16", "dropout": "0.1",
                                    "proj": "qv", "lr": "0.0002"}  # method=none's lr trains nothing
    assert T.varies(df, "method") and not T.varies(df, "lr") and not T.varies(df, "alpha")


def test_proj_all_is_a_code_of_its_own(tmp_path):
    """lora.proj=all (every linear layer) is a row of its own, not an empty code."""
    df = _frame(tmp_path, [result(r=4, proj="all", acc=0.7), result(r=4, proj="qv", acc=0.6)])
    assert sorted(T.projection_table(df)["proj"]) == ["all", "qv"]
