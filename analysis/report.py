"""Write the tables (CSV + LaTeX), plots (PNG), report.md and a self-contained report.html."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from analysis import tables as T
from analysis.load import LoadReport

FLOAT_DIGITS = 4


def fmt(v: object) -> str:
    """One table cell as text: floats to 4 significant decimals, big ints with separators, NaN empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{FLOAT_DIGITS}g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1000 else str(v)
    return str(v).replace("|", "\\|")


def md_table(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which we do not require)."""
    if df.empty:
        return "_no data_\n"
    d = df.reset_index() if index else df
    head = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v.item() if hasattr(v, "item") else v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def build_tables(df: pd.DataFrame, budget: int | None, metric: str,
                 group_by: list[str] | None = None) -> dict[str, tuple[pd.DataFrame, bool]]:
    """name -> (table, whether its index is meaningful). Order is the order in the report. A table of
    one factor (rank, projection, alpha, dropout and lr) is left out when its factor does not vary:
    the summary's `fixed settings` line says its value instead."""
    cells = T.pareto_front(T.cell_stats(df, group_by, metric), metric)
    view = T.budget_view(df, budget, metric)
    tabs = {
        "cells": lambda: (cells, False),
        "method": lambda: (T.method_table(df, metric), False),
        "rank": lambda: (T.rank_table(df, metric), True),
        "projection": lambda: (T.projection_table(df, metric), False),
        "rank_proj": lambda: (T.rank_proj_pivot(df, metric), True),
        "alpha": lambda: (T.alpha_table(df, metric), False),
        "dropout_lr": lambda: (T.dropout_lr_table(df, metric), False),
        "budget": lambda: (view, False),
        "significance": lambda: (T.significance(df, metric), False),
    }
    shown = {name for name, factors in T.FACTOR_TABLES.items() if any(T.varies(df, k) for k in factors)}
    return {name: table() for name, table in tabs.items() if name not in T.FACTOR_TABLES or name in shown}


def write_report(df: pd.DataFrame, load: LoadReport, out: Path, budget: int | None = None,
                 metric: str = "accuracy", group_by: list[str] | None = None,
                 plots: bool = True) -> list[Path]:
    """Write everything into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    runs = df.drop(columns=["curve"], errors="ignore")
    runs.to_csv(out / "runs.csv", index=False)
    written.append(out / "runs.csv")
    tabs = build_tables(df, budget, metric, group_by)
    for name, (t, index) in tabs.items():
        t.to_csv(out / f"{name}.csv", index=index)
        (out / f"{name}.tex").write_text(t.to_latex(index=index, float_format=lambda v: f"{v:.4g}", na_rep="", escape=True))
        written += [out / f"{name}.csv", out / f"{name}.tex"]
    images = _plots(df, tabs, out, budget, metric) if plots else {}
    written += images.values()
    md = render_md(df, load, tabs, budget, metric, images)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(df, load, tabs, budget, metric, images))
    return written + [out / "report.md", out / "report.html"]


def _plots(df: pd.DataFrame, tabs: dict, out: Path, budget: int | None, metric: str) -> dict[str, Path]:
    from analysis import plots as P  # matplotlib only when plotting
    made = {"pareto": P.pareto_plot(tabs["cells"][0], out / "pareto.png", budget, metric),
            "curves": P.curve_plot(df, out / "curves.png", metric),
            "heatmap": P.heatmap(tabs["rank_proj"][0], out / "rank_proj.png", metric)}
    return {k: v for k, v in made.items() if v is not None}


def summary(df: pd.DataFrame, load: LoadReport, tabs: dict, budget: int | None, metric: str) -> list[str]:
    """Counts and the best cell within budget, one bullet each."""
    s = T.status_counts(df)
    view = tabs["budget"][0]
    # a cell without a trainable count (a run that failed before counting) is not "over budget"
    over = int((view["trainable"] > budget).sum()) if budget is not None and len(view) else 0
    lines = [f"files read: {load.files}", f"runs: {load.loaded} (duplicate run keys ignored: {load.duplicates})",
             f"done: {s['done']}, failed: {s['failed']}, pruned: {s['pruned']}, "
             f"skipped over budget: {s['skipped_budget']}, diverged: {s['diverged']}",
             f"cells over budget: {over}" + (f" (budget {budget:,} trainable)" if budget else " (no budget given)"),
             f"skipped files: {load.n_skipped}"]
    fixed = T.fixed_settings(df)
    if fixed:  # a factor table whose factor is here has been left out: this says its one value
        lines.append("fixed settings: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    best = T.best_within_budget(view, metric)
    if best is not None:
        what = ", ".join(f"{k}={fmt(best[k])}" for k in T.cell_keys(df) if k in best and fmt(best[k]))
        lines.append(f"best within budget: {what}: {metric} {fmt(best[metric])} "
                     f"± {fmt(best[f'{metric}_se'])}, trainable {int(best['trainable']):,}")
    return lines


TITLES = {"cells": "Cells (mean over seeds; pareto = not dominated in metric and trainable)",
          "method": "Methods", "rank": "Rank (rows r, columns method/proj)", "projection": "Projections",
          "rank_proj": "Rank x projection", "alpha": "Alpha", "dropout_lr": "Dropout and learning rate",
          "budget": "Budget (every cell; fits = trainable <= budget)",
          "significance": "Against the method=none baseline"}


def render_md(df: pd.DataFrame, load: LoadReport, tabs: dict, budget: int | None, metric: str,
              images: dict[str, Path]) -> str:
    parts = ["# lorasweep report\n", *[f"- {line}" for line in summary(df, load, tabs, budget, metric)], ""]
    for name, path in images.items():
        parts.append(f"![{name}]({path.name})\n")
    for name, (t, index) in tabs.items():
        parts += [f"## {TITLES[name]}\n", md_table(t, index)]
    if load.skipped:
        parts += ["## Skipped files\n"] + [f"- `{p}`: {why}" for p, why in load.skipped]
    return "\n".join(parts) + "\n"


def render_html(df: pd.DataFrame, load: LoadReport, tabs: dict, budget: int | None, metric: str,
                images: dict[str, Path]) -> str:
    """One file, images embedded as base64, so it can be mailed or attached as is."""
    body = ["<h1>lorasweep report</h1><ul>"]
    body += [f"<li>{html.escape(line)}</li>" for line in summary(df, load, tabs, budget, metric)] + ["</ul>"]
    for name, path in images.items():
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f'<img alt="{name}" src="data:image/png;base64,{data}">')
    for name, (t, index) in tabs.items():
        body.append(f"<h2>{html.escape(TITLES[name])}</h2>")
        # the markdown's cell format (separators, yes/no), not pandas' scientific notation
        body.append(t.astype(object).map(fmt).to_html(index=index) if len(t) else "<p><i>no data</i></p>")
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(body) + "</body></html>\n"
