"""Trace-level statistics: traces (or texts), not tokens, are the unit of every interval.

``bootstrap`` resamples units with replacement (``resamples`` times, seeded) and recomputes a
statistic of the per-unit sums; the 95 % interval is the 2.5th and 97.5th percentile of those
recomputed values (percentile bootstrap, empirical quantiles without interpolation, so an
infinite ratio stays infinite). ``spearman`` is the Pearson correlation of the ranks
(ties get their average rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def weights(units: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, units]`` counts: how often each unit is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples).astype(np.float64)


def bootstrap(parts: dict[str, np.ndarray], statistic: Callable[..., np.ndarray],
              resamples: int, seed: int) -> tuple[float, float, float]:
    """``(value, low, high)``: ``statistic(**sums)`` of the per-unit arrays ``parts`` (each
    ``[units]``) summed over all units, and its 95 % percentile-bootstrap interval. NaN values
    of a resample (e.g. a 0/0) are left out of the percentiles."""
    units = len(next(iter(parts.values())))
    total = {k: np.asarray(v, dtype=np.float64).sum(keepdims=True) for k, v in parts.items()}
    value = float(statistic(**total)[0])
    if units == 0:
        return value, math.nan, math.nan
    w = weights(units, resamples, seed)
    sums = {k: w @ np.asarray(v, dtype=np.float64) for k, v in parts.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = statistic(**sums)
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return value, math.nan, math.nan
    lo, hi = np.quantile(stats, [0.025, 0.975], method="inverted_cdf")  # no inf - inf
    return value, float(lo), float(hi)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, inf where only den is 0, NaN where both are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # average rank of ties
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rank correlation of two equal-length sequences (None under 3 pairs or a
    constant side)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def finite(x: float | None) -> float | None:
    """A number for JSON: None for NaN and ±inf (the row says why)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")
