"""python -m analysis results/ [more dirs or globs] --budget 1000000 --out report/"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.load import load_results
from analysis.report import write_report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Tables and a report from result JSONs.")
    p.add_argument("paths", nargs="+", help="folders (searched for result.json), files or glob patterns")
    p.add_argument("--budget", type=int, default=None, help="cap on trainable parameters")
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default report/)")
    p.add_argument("--where", default=None, help="pandas query on the run table, e.g. 'task==\"wordnet_mcq\"'")
    p.add_argument("--metric", default="accuracy", help="test metric column (default accuracy)")
    p.add_argument("--group-by", default=None,
                   help="comma-separated keys for the cells table (default: every setting but the seed)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    df, load = load_results(a.paths)
    if df.empty:
        print(f"error: no readable result.json under {' '.join(map(str, a.paths))} "
              f"({load.files} files found, {load.n_skipped} skipped)", file=sys.stderr)
        return 2
    if a.where:
        df = df.query(a.where)
        if df.empty:
            print(f"error: --where {a.where!r} kept no run (of {load.loaded})", file=sys.stderr)
            return 2
    if a.metric not in df.columns:
        print(f"error: metric {a.metric!r} is not in the results; test metrics found: "
              f"{[c for c in ('accuracy', 'test_loss') if c in df.columns]}", file=sys.stderr)
        return 2
    group_by = a.group_by.split(",") if a.group_by else None
    unknown = [k for k in group_by or [] if k not in df.columns]
    if unknown:
        print(f"error: --group-by {unknown} not among the run columns: {list(df.columns)}", file=sys.stderr)
        return 2
    written = write_report(df, load, a.out, a.budget, a.metric, group_by, plots=not a.no_plots)
    print(f"read {load.files} files: {len(df)} runs, {load.duplicates} duplicates, {load.n_skipped} skipped")
    print(f"wrote {len(written)} files (tables as CSV and LaTeX, plots as PNG) into {a.out}/")
    print(f"report: {a.out / 'report.md'} and {a.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
