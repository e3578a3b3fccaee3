"""Small statistics shared by the evaluators."""
from __future__ import annotations

import math


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent items: sqrt(p(1-p)/n)."""
    if n <= 0 or math.isnan(p):
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


def headline(metrics: dict) -> str:
    """The metrics a person reads first, e.g. "accuracy 0.623 ± 0.015 (n=1000)"; generation tasks
    show token accuracy and exact match (their accuracy-like numbers)."""
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.3f} ± {metrics['accuracy_se']:.3f} (n={metrics['n']})"
    if "token_accuracy" in metrics:
        return (f"token accuracy {metrics['token_accuracy']:.3f} ± {metrics['token_accuracy_se']:.3f}, "
                f"exact match {metrics['exact_match']:.3f} ± {metrics['exact_match_se']:.3f}, "
                f"loss {metrics['loss']:.3f} (n={metrics['n']})")
    return ", ".join(f"{k} {v}" for k, v in metrics.items())
