"""PNG plots for the report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .load import ADAPTER_METHODS  # noqa: E402

MAX_CURVES = 20  # beyond this a line plot is unreadable; the first settings in table order are drawn


def _label(row: pd.Series, with_model: bool) -> str:
    name = f"{row['model']} " if with_model else ""
    if row.get("method") in ADAPTER_METHODS:
        return f"{name}{row['method']} {row['proj']} r={row['r']:g}"
    return f"{name}{row.get('method')}"


def pareto_plot(cells: pd.DataFrame, path: Path, budget: int | None, metric: str = "accuracy") -> Path | None:
    """Metric vs trainable params (log x), the Pareto front joined, and the budget as a line."""
    c = cells.dropna(subset=[metric, "trainable"])
    c = c[c["trainable"] > 0]  # log axis: method=none trains nothing, so it cannot be placed
    if c.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    se = c.get(f"{metric}_se")
    ax.errorbar(c["trainable"], c[metric], yerr=None if se is None else se.fillna(0), fmt="o", alpha=0.6,
                label="cells")
    front = c[c["pareto"]].sort_values("trainable")
    ax.plot(front["trainable"], front[metric], "r-", marker="o", label="Pareto front")
    if budget:
        ax.axvline(budget, color="k", ls="--", label=f"budget {budget:,}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curve_plot(df: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """Metric vs step per setting, averaged over seeds (done runs' `curve`)."""
    d = df[(df["status"] == "done") & df["curve"].map(bool)] if len(df) else df
    if d.empty:
        return None
    # settings in table order (model, method, proj, r numerically), not alphabetical (r=16 < r=2)
    d = d.sort_values([k for k in ("model", "method", "proj", "r") if k in d.columns], na_position="first")
    with_model = d["model"].nunique() > 1
    points = []
    for _, row in d.iterrows():
        for p in row["curve"]:
            if isinstance(p, dict) and p.get(metric) is not None:
                points.append({"setting": _label(row, with_model), "step": p["step"], metric: p[metric]})
    if not points:
        return None
    points = pd.DataFrame(points)
    mean = points.groupby(["setting", "step"], sort=False)[metric].mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in list(points["setting"].unique())[:MAX_CURVES]:
        s = mean[mean["setting"] == name]
        ax.plot(s["step"], s[metric], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"eval {metric} (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def heatmap(pivot: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """The r x proj grid of the mean metric, values written in the cells."""
    if pivot.empty:
        return None
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * pivot.shape[1], 1.2 + 0.5 * pivot.shape[0]))
    vals = pivot.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="viridis", aspect="auto")
    labels = [str(c) for c in pivot.columns]  # 'qv', or 'qv method=dora' when more than proj varies
    long = max(map(len, labels)) > 8
    ax.set_xticks(range(pivot.shape[1]), labels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(pivot.shape[0]), [f"{r:g}" for r in pivot.index])
    ax.set_xlabel("projection")
    ax.set_ylabel("r")
    for (i, j), v in np.ndenumerate(vals):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # many reports in one process (tests) must not pile up figures
    return path
