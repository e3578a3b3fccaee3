"""Small statistics shared by the evaluators."""
from __future__ import annotations

import math


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent items: sqrt(p(1-p)/n)."""
    if n <= 0 or math.isnan(p):
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)
