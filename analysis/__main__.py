"""python -m analysis results/ [more dirs or globs] --budget 1M --out report/"""
from __future__ import annotations

import argparse
import re
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd

from analysis.load import load_results, path_matches
from analysis.report import write_report


# A count written as budget.max_trainable is (lorasweep.config.checks.parameter_count, not imported:
# analysis reads result files only); tests/test_analysis.py keeps the two in step.
_COUNT = re.compile(r"(\d[\d_]*(?:\.\d+)?(?:e\d+)?)([kmb]?)", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parameter_count(text: str) -> int | None:
    """1000000, 1_000_000, 1e6, 1M, 1.5m, 500k, 2B as a whole number; None when it is not a positive one."""
    match = _COUNT.fullmatch(text.strip())
    if match is None:
        return None
    value = Decimal(match.group(1).replace("_", "")) * _SCALE[match.group(2).lower()]  # exact: 0.1k is 100
    return int(value) if value == value.to_integral_value() and value > 0 else None


def budget(text: str) -> int:
    """--budget: a cap on trainable parameters (1000000, 1M, 500k)."""
    value = parameter_count(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a cap on trainable parameters: give a whole number 1 "
                                         f"or more, e.g. 1000000 or 1M")
    return value


def objective_metric(df: pd.DataFrame) -> str:
    """The test metric the runs were ranked by (their objective, test.NAME) where they all share one:
    token_accuracy for chat and completion runs; else accuracy."""
    names = {n.removeprefix("test.") for n in df["objective_name"].dropna() if n.startswith("test.")}
    return names.pop() if len(names) == 1 else "accuracy"


def other_objectives(df: pd.DataFrame, metric: str) -> list[str]:
    """A note per task whose runs have no `metric` but another objective (a chat or completion task
    beside classification ones): they are in the tables with no value, and can be reported by theirs."""
    named = df["objective_name"].fillna("")
    other = df[df[metric].isna() & named.str.startswith("test.") & (named != f"test.{metric}")]
    lines = []
    for (task, name), n in other.groupby(["task", "objective_name"]).size().items():
        runs, have, theirs = ("1 run", "has", "its") if n == 1 else (f"{n} runs", "have", "their")
        objective = name.removeprefix("test.")
        lines.append(f"note: {runs} of task {task} {have} no {metric}: {theirs} objective is {objective} "
                     f"(--where \"task == '{task}'\" --metric {objective} reports them)")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Tables and a report from result JSONs.")
    p.add_argument("paths", nargs="+", help="folders (searched for result.json), files or glob patterns")
    p.add_argument("--budget", type=budget, default=None, help="cap on trainable parameters")
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default report/)")
    p.add_argument("--where", default=None, help="pandas query on the run table, e.g. 'task==\"wordnet_mcq\"'")
    p.add_argument("--metric", default=None,
                   help="test metric column (default: the runs' objective, accuracy or token_accuracy)")
    p.add_argument("--group-by", default=None,
                   help="comma-separated keys for the cells table (default: every setting but the seed)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.out.exists() and not a.out.is_dir():
        print(f"error: --out {a.out} is a file; give a folder for the report (default report/)", file=sys.stderr)
        return 2
    missing = [p for p in a.paths if not path_matches(p)]
    if missing:
        print(f"error: {', '.join(missing)}: no such file or folder (nor a glob pattern that matches one)",
              file=sys.stderr)
        return 2
    df, load = load_results(a.paths)
    if df.empty:
        print(f"error: no readable result.json under {' '.join(map(str, a.paths))} "
              f"({load.files} files found, {load.n_skipped} skipped)", file=sys.stderr)
        return 2
    if a.where:
        try:
            df = df.query(a.where)
        except Exception as e:  # pandas says a bad query in many exception types (names, syntax, types)
            print(f"error: --where {a.where!r} is not a query on the run table: {type(e).__name__}: {e}; "
                  f"quote strings (task == 'wordnet_topics') and name columns from runs.csv", file=sys.stderr)
            return 2
        if df.empty:
            print(f"error: --where {a.where!r} kept no run (of {load.loaded})", file=sys.stderr)
            return 2
    metric = a.metric or objective_metric(df)
    if metric not in df.columns:
        found = sorted(m for m in load.test_metrics if not m.endswith("_se") and m not in ("n", "n_tokens"))
        if found:
            print(f"error: metric {metric!r} is not in the results; test metrics found: {', '.join(found)} "
                  f"(--metric NAME)", file=sys.stderr)
        else:
            counts = ", ".join(f"{n} {status}" for status, n in df["status"].value_counts().items())
            print(f"error: no run has test metrics yet ({len(df)} run{'s' * (len(df) != 1)}: {counts}): the tables need a "
                  f"finished run", file=sys.stderr)
        return 2
    for line in other_objectives(df, metric):
        print(line, file=sys.stderr)
    group_by = a.group_by.split(",") if a.group_by else None
    unknown = [k for k in group_by or [] if k not in df.columns]
    if unknown:
        print(f"error: --group-by {unknown} not among the run columns: {list(df.columns)}", file=sys.stderr)
        return 2
    written = write_report(df, load, a.out, a.budget, metric, group_by, plots=not a.no_plots)
    print(f"read {load.files} files: {len(df)} runs, {load.duplicates} duplicates, {load.n_skipped} skipped")
    print(f"wrote {len(written)} files (tables as CSV and LaTeX, plots as PNG) into {a.out}/")
    print(f"report: {a.out / 'report.md'} and {a.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
