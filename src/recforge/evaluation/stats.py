"""Uncertainty for per-user metrics: confidence intervals, paired significance tests, multiple-comparison
correction. Comparisons are paired by user, because the same users are scored by every model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaNs ignored)."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


@dataclass(frozen=True)
class PairedTest:
    method: str
    n: int
    mean_difference: float
    statistic: float
    p_value: float


def paired_test(a: np.ndarray, b: np.ndarray, method: Literal["wilcoxon", "t"] = "wilcoxon") -> PairedTest:
    """Two-sided paired test of a vs b over the same users (pairs with a NaN are dropped).

    Wilcoxon signed-rank (zero differences handled by Pratt's method) is the default: per-user ranking
    metrics are bounded and far from normal. A paired t-test is available for rating errors.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError("paired test needs arrays over the same users")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    if len(diff) < 2 or np.all(diff == 0):
        return PairedTest(method, len(diff), float(diff.mean()) if len(diff) else 0.0, float("nan"), 1.0)
    if method == "wilcoxon":
        result = stats.wilcoxon(a, b, zero_method="pratt", alternative="two-sided")
    else:
        result = stats.ttest_rel(a, b)
    return PairedTest(method, len(diff), float(diff.mean()), float(result.statistic), float(result.pvalue))


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate; monotone)."""
    p = np.asarray(p_values, np.float64)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
