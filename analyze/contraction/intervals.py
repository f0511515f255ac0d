"""Standard errors and Student-t intervals of a statistic whose replicates resample independent groups (sequence
blocks)."""

from __future__ import annotations

import math

import numpy as np


def replicate_se(replicates: np.ndarray, groups: int) -> float:
    """``√(g/(g−1)) · sd(replicates)``: the standard error of a statistic whose replicates resample ``groups``
    independent groups (the small-sample factor of a cluster variance with g − 1 degrees of freedom)."""
    return math.sqrt(groups / (groups - 1)) * float(np.asarray(replicates, dtype=np.float64).std(ddof=1))


def t_interval(point: float, replicates: np.ndarray, groups: int, level: float = 0.95) -> tuple[float, float]:
    """``point ± t_{g−1} · √(g/(g−1)) · sd(replicates)``: the interval of a statistic whose replicates resample
    ``groups`` independent groups (sequence blocks); (NaN, NaN) without ≥ 2 groups, ≥ 2 replicates, or when a
    replicate has no fit (dropping those would bias the interval).

    Centred on the point estimate, not on the replicates' percentiles: with g = 16 blocks the bootstrap's spread
    is a cluster variance with g − 1 degrees of freedom, hence Student's t and the small-sample factor (coverage
    on synthetic power laws in benchmarks/bench_ci.py).
    """
    from scipy.stats import t

    replicates = np.asarray(replicates, dtype=np.float64)
    if groups < 2 or replicates.size < 2 or not np.isfinite(replicates).all() or not math.isfinite(point):
        return math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, groups - 1)) * replicate_se(replicates, groups)
    return point - half, point + half

