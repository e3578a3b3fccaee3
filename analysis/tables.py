"""Pure table functions on the frame from load_results.

A *cell* is one setting with the seed left out. Means use done runs only; other statuses (failed,
pruned, skipped_budget, diverged) are counted, per cell in the budget view's `statuses` and in total
by status_counts, and never mixed into a mean: a diverged run (its training loss became NaN) is not a
0% data point. Each table has its own keys (the method
table: method; the projection table: method, proj; ...); a setting that varies within one of those
rows (a results folder with a rank sweep and a method comparison: r varies among the lora runs) is
added as a key, so every row is one cell and its n_seeds counts seeds, never pooled settings.

Standard error of a cell: with k > 1 seeds, std/sqrt(k) (ddof=1) across seeds; with one run, that
run's own binomial `<metric>_se` (the only uncertainty we have).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# The settings that define a cell, with the seed left out; cell_keys adds any other run-defining
# setting (a column named by its config path, train.max_steps, ...) that differs within such a cell.
CELL_KEYS = ["model", "task", "method", "r", "alpha", "dropout", "proj", "lr"]
METHOD_ORDER = ["none", "lora", "dora", "rslora", "pissa", "qlora", "qlora8", "full"]


def _keys(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in df.columns]


def cell_keys(df: pd.DataFrame) -> list[str]:
    """CELL_KEYS, plus each other run-defining setting (train.max_steps, model.layers, task.max_test,
    ...: analysis.load names their columns by config path) that differs between runs of one CELL_KEYS
    cell: such runs are not seeds of one setting, so they are never averaged together."""
    keys = _keys(df, CELL_KEYS)
    others = [c for c in df.columns if "." in c]
    if df.empty or not others:
        return keys
    within = df.groupby(keys, dropna=False)[others].nunique(dropna=False).max()
    return keys + [c for c in others if within[c] > 1]


def done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if len(df) else df


def table_keys(df: pd.DataFrame, primary: list[str]) -> list[str]:
    """`primary`, then every other cell key that takes more than one value within a primary group."""
    primary = _keys(df, primary)
    if df.empty:
        return primary
    groups = df.groupby(primary, dropna=False) if primary else None
    extra = [k for k in cell_keys(df) if k not in primary and
             ((groups[k].nunique(dropna=False) > 1).any() if groups is not None else df[k].nunique(dropna=False) > 1)]
    return primary + extra


def _label(cells: pd.DataFrame, parts: list[str], extra: list[str]) -> pd.Series:
    """'lora/qv', plus ' lr=0.001' for each extra key: a column name per setting."""
    label = cells[parts].astype(str).agg("/".join, axis=1)
    for k in extra:
        label = label + f" {k}=" + cells[k].map(_number)  # 250, not 250.0 where other runs have none
    return label


def cell_stats(df: pd.DataFrame, keys: list[str] | None = None, metric: str = "accuracy") -> pd.DataFrame:
    """Per cell: mean metric over seeds, its SE, n_seeds, trainable (mean over runs)."""
    keys = _keys(df, keys or cell_keys(df))
    d = done(df)
    se_col = f"{metric}_se"
    cols = keys + [metric, se_col, "n_seeds", "trainable"]
    if d.empty or metric not in d.columns:
        return pd.DataFrame(columns=cols)
    d = d.assign(_se=d[se_col] if se_col in d.columns else np.nan)
    g = d.groupby(keys, dropna=False, sort=True)
    out = g.agg(mean=(metric, "mean"), std=(metric, "std"), k=(metric, "count"),
                own_se=("_se", "first"), trainable=("trainable", "mean")).reset_index()
    across = out["std"] / np.sqrt(out["k"])
    out[se_col] = np.where(out["k"] > 1, across, out["own_se"])
    out = out.rename(columns={"mean": metric, "k": "n_seeds"})
    return out[cols]


def rank_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Rows r; per (method, proj) setting, e.g. `lora/qk`: the mean metric over seeds, then its SE
    (`lora/qk ±`), the number of seeds (`lora/qk n`) and trainable parameters."""
    d = _adapted(df)
    keys = table_keys(d, ["method", "proj", "r"])
    c = cell_stats(d, keys, metric)
    if c.empty:
        return pd.DataFrame()
    c["setting"] = _label(c, ["method", "proj"], keys[3:])
    suffix = {metric: "", f"{metric}_se": " ±", "n_seeds": " n", "trainable": " trainable"}
    t = c.pivot_table(index="r", columns="setting", values=list(suffix), aggfunc="first")
    t.columns = [f"{setting}{suffix[field]}" for field, setting in t.columns]
    t.index = _integer_ranks(t.index)
    return t[[f"{s}{x}" for s in sorted(c["setting"].unique()) for x in suffix.values() if f"{s}{x}" in t]]


def projection_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Rows canonical projection code (per method, and per r etc. where those vary): mean, SE, n_seeds, trainable."""
    d = _adapted(df)
    return cell_stats(d, table_keys(d, ["method", "proj"]), metric)


def rank_proj_pivot(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """r x proj grid of the mean metric; a column per proj, or per proj and whatever else varies (method, ...)."""
    d = _adapted(df)
    keys = table_keys(d, ["r", "proj"])
    c = cell_stats(d, keys, metric)
    if c.empty:
        return pd.DataFrame()
    c["setting"] = _label(c, ["proj"], keys[2:])
    t = c.pivot_table(index="r", columns="setting", values=metric, aggfunc="first")
    t.columns.name = None
    t.index = _integer_ranks(t.index)
    return t


def method_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """One row per method (none, lora, dora, full, then others; and per setting where one varies
    within a method): metric, cost and size."""
    keys = table_keys(df, ["method"])
    c = cell_stats(df, keys, metric)
    if c.empty:
        return c
    extra = done(df).groupby(keys, dropna=False).agg(adapter_bytes=("adapter_bytes", "mean"),
                                                     train_s=("train_s", "mean"), peak_rss_mb=("peak_rss_mb", "mean"))
    c = c.merge(extra.reset_index(), on=keys, how="left")
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rank = c["method"].map(lambda m: order.get(m, 99))
    return c.assign(_order=rank).sort_values(["_order", *keys[1:]], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def alpha_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    d = _adapted(df)
    return cell_stats(d, table_keys(d, ["method", "r", "alpha"]), metric)


def dropout_lr_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    return cell_stats(df, table_keys(df, ["method", "dropout", "lr"]), metric)


# A table of one factor is shown when that factor varies in the results, else it would repeat the
# cells under another title (a rank x projection sweep has one alpha per rank and one dropout and lr).
FACTOR_TABLES = {"rank": ("r",), "projection": ("proj",), "alpha": ("alpha",), "dropout_lr": ("dropout", "lr")}


def setting_values(df: pd.DataFrame, key: str) -> pd.Series:
    """The values a setting takes among the runs it applies to: r, alpha, dropout and proj among the
    adapter runs (the others have none), lr among the runs that train (not method=none). alpha is
    taken relative to r (alpha / r): alpha = 2 x r over a rank sweep is one setting, not three."""
    if key not in df.columns or df.empty:
        return pd.Series(dtype=object)
    rows = df[df["method"] != "none"] if key == "lr" else df
    if key == "alpha":
        return (rows["alpha"] / rows["r"]).dropna()
    return rows[key].dropna()


def varies(df: pd.DataFrame, key: str) -> bool:
    return setting_values(df, key).nunique() > 1


def fixed_settings(df: pd.DataFrame) -> dict[str, str]:
    """Each cell setting that takes one value in every run it applies to, as text: {"dropout": "0.05",
    "alpha": "2 x r", ...} (alpha as a multiple of r while r varies, else its value)."""
    fixed = {}
    for key in CELL_KEYS:
        values = setting_values(df, key).unique()
        if len(values) != 1:
            continue
        if key == "alpha":
            alphas = df["alpha"].dropna().unique()
            fixed[key] = f"{_number(values[0])} x r" if len(alphas) > 1 else _number(alphas[0])
        else:
            fixed[key] = _number(values[0])
    return fixed


def _number(value: object) -> str:
    """4 not 4.0, 0.0002 not 2e-04.0; strings as they are."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _integer_ranks(index: pd.Index) -> pd.Index:
    """r is read as float when other runs (none, full) have none; rows of ranks print as 4, not 4.0."""
    return index.astype("int64") if len(index) and (index == index.round()).all() else index


def _adapted(df: pd.DataFrame) -> pd.DataFrame:
    """The lora and dora runs: the ones with a rank and a projection set."""
    return df[df["method"].isin(["lora", "dora"])] if len(df) else df


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    """Runs per status, every known status present (0 when absent)."""
    counts = {s: 0 for s in ("done", "failed", "pruned", "skipped_budget", "diverged")}
    if len(df):
        counts.update(df["status"].value_counts().to_dict())
    return counts


def budget_view(df: pd.DataFrame, budget: int | None, metric: str = "accuracy") -> pd.DataFrame:
    """Every cell (any status) with its trainable count and whether it fits the budget.

    Over-budget cells, including skipped_budget results (whose `trainable` is the predicted count),
    stay in the table with fits=False: the point is to see what the budget excluded.
    """
    keys = cell_keys(df)
    if df.empty:
        return pd.DataFrame(columns=keys + ["trainable", "fits", metric, f"{metric}_se", "n_seeds", "statuses"])
    g = df.groupby(keys, dropna=False, sort=True)
    cells = g.agg(trainable=("trainable", "max"),
                  statuses=("status", lambda s: ",".join(f"{k}:{v}" for k, v in sorted(s.value_counts().items()))))
    cells = cells.reset_index()
    stats = cell_stats(df, keys, metric).drop(columns="trainable")
    cells = cells.merge(stats, on=keys, how="left")
    cells["n_seeds"] = cells["n_seeds"].fillna(0).astype(int)
    # NaN trainable (failed before counting) compares False: not shown as fitting
    cells["fits"] = True if budget is None else (cells["trainable"] <= budget).astype(bool)
    return cells[keys + ["trainable", "fits", metric, f"{metric}_se", "n_seeds", "statuses"]]


def best_within_budget(view: pd.DataFrame, metric: str = "accuracy") -> pd.Series | None:
    """The fitting cell with the best mean metric (ties: fewer trainable); None when none fits."""
    ok = view[view["fits"] & view[metric].notna()] if len(view) else view
    if ok.empty:
        return None
    return ok.sort_values([metric, "trainable"], ascending=[False, True]).iloc[0]


def pareto_front(cells: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """`cells` with a `pareto` column: True when no other cell has metric >= and trainable <=,
    one of them strictly. Cells without a metric or trainable count are never on the front."""
    c = cells.copy()
    c["pareto"] = False
    ok = c[metric].notna() & c["trainable"].notna()
    acc = c.loc[ok, metric].to_numpy(float)
    tr = c.loc[ok, "trainable"].to_numpy(float)
    order = np.lexsort((-acc, tr))  # by trainable ascending, then metric descending
    on = np.zeros(len(acc), bool)
    best_smaller = -math.inf  # best metric among cells with strictly fewer trainable params
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and tr[order[j]] == tr[order[i]]:
            j += 1
        top = acc[order[i]]  # the best in this trainable group (sorted first)
        for idx in order[i:j]:
            on[idx] = acc[idx] == top and top > best_smaller
        best_smaller = max(best_smaller, top)
        i = j
    c.loc[ok, "pareto"] = on
    return c


def significance(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Each cell against the method=none baseline of its (model, task).

    Welch's t-test (scipy) when both sides have >= 2 seeds; otherwise a two-sided normal test on
    z = diff / sqrt(se_cell^2 + se_base^2) using the cells' SEs (the binomial SE for one run).
    """
    keys = cell_keys(df)
    cells = cell_stats(df, keys, metric)
    if cells.empty:
        return cells
    # the baseline evaluates the same model on the same test: the model's and task's other settings
    # that tell cells apart (model.layers, task.max_test, ...) must match too
    same_test = ["model", "task"] + [k for k in keys if k.startswith(("model.", "task."))]
    base = {tuple(str(b[k]) for k in same_test): b for _, b in cells[cells["method"] == "none"].iterrows()}
    d = done(df)
    rows = []
    for _, c in cells[cells["method"] != "none"].iterrows():
        b = base.get(tuple(str(c[k]) for k in same_test))
        if b is None:
            continue
        diff = c[metric] - b[metric]
        test, p = _welch(d, c, b, metric, keys) if c["n_seeds"] > 1 and b["n_seeds"] > 1 else (None, None)
        if p is None:
            se = math.hypot(c[f"{metric}_se"], b[f"{metric}_se"])
            test = "normal"
            p = math.erfc(abs(diff) / se / math.sqrt(2)) if se > 0 else (1.0 if diff == 0 else 0.0)
        rows.append({**c.to_dict(), "baseline": b[metric], "diff": diff, "test": test, "p": p})
    return pd.DataFrame(rows)


def _welch(d: pd.DataFrame, c: pd.Series, b: pd.Series, metric: str, keys: list[str]
           ) -> tuple[str | None, float | None]:
    try:
        from scipy import stats  # optional: the normal approximation is used without it
    except ImportError:
        return None, None
    def values(cell: pd.Series) -> np.ndarray:
        m = np.ones(len(d), bool)
        for k in keys:
            v = cell[k]
            m &= d[k].isna().to_numpy() if pd.isna(v) else (d[k] == v).to_numpy()
        return d.loc[m, metric].to_numpy(float)
    x, y = values(c), values(b)
    if x.std() == 0 and y.std() == 0:
        return None, None  # t undefined; fall back to the normal test
    return "welch", float(stats.ttest_ind(x, y, equal_var=False).pvalue)
