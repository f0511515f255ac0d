"""How many lens tokens reach a precision target for mean L (pure maths; issue 13's chosen subsample size).

With tokens subsampled uniformly from sequences, the clustered variance of a step's mean L at n tokens is
``SE²(n) ≈ a + W·n0/n``: ``a`` from the spread of the sequences' own means (more tokens of the same
sequences cannot remove it), ``W·n0/n`` from the tokens within them (it shrinks as 1/n). Both are estimated
from a pilot of n0 tokens; the size asked for is the smallest n whose predicted SE is ≤ target × the SD of the
steps' mean L (trace.json ``L_precision``), or None when even every token would not reach it.
"""

from __future__ import annotations

import math

import numpy as np

MARGIN = 1.1  # grow 10 % beyond the predicted size: the pilot's variance estimates are themselves noisy
# At most this factor per round: a between-sequence part estimated near the goal asks for every token, which a
# larger, re-measured subsample usually shows was not needed (known-variance streams, 8 seeds: at 8× per round the
# rounds ended at all tokens, 1.40× the size needed; at 4×, 1.15–1.40×, in 3 rounds).
GROWTH = 4


def cluster_se(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of the token mean ``Σ sums / Σ counts`` with tokens clustered in sequences (per-sequence
    ``sums`` and ``counts``; the sandwich form with the g/(g−1) factor); NaN with < 2 sequences."""
    used = counts > 0
    g = int(used.sum())
    if g < 2:
        return math.nan
    total = counts[used].sum()
    resid = sums[used] - counts[used] * (sums[used].sum() / total)
    return float(math.sqrt(g / (g - 1) * (resid**2).sum()) / total)


def _spread(steps_L: list[np.ndarray]) -> float:
    """SD of the steps' mean L: the scale the precision target is a share of."""
    means = np.array([float(np.mean(x)) for x in steps_L])
    return float(np.std(means, ddof=1)) if means.size >= 2 else math.nan


def tokens_for_precision(steps_L: list[np.ndarray], seq: np.ndarray, n_seq: int, target: float,
                         n_all: int) -> int | None:
    """Tokens needed so every step's SE of mean L is ≤ ``target`` × SD of the steps' means.

    ``steps_L``: per step, the pilot's per-token L (n0,); ``seq``: each pilot token's sequence.
    Returns the size (≥ n0, ≤ n_all), or None when the between-sequence part alone exceeds the target
    (the prompt set, not the subsample, limits the precision).
    """
    n0 = seq.size
    spread = _spread(steps_L)
    if not (n0 and spread > 0):
        return None
    counts = np.bincount(seq, minlength=n_seq)
    g = int((counts > 0).sum())
    goal = (target * spread) ** 2
    need = n0
    for values in steps_L:
        sums = np.bincount(seq, weights=values, minlength=n_seq)
        se2 = cluster_se(sums, counts) ** 2
        seq_mean = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        within = float(((values - seq_mean[seq]) ** 2).sum()) / (n0 - g) if n0 > g else math.nan
        w = within / n0 if math.isfinite(within) else se2  # no repeated sequence: all of it treated as within
        # a by subtraction is noisy by ~ se2·√(2/g) (both terms are estimates): count it only beyond that noise,
        # so a pilot dominated by within-sequence noise is not mistaken for one the prompt set limits
        excess = se2 - w
        between = excess if excess > 2 * se2 * math.sqrt(2 / max(g, 1)) else 0.0
        if not math.isfinite(se2) or between >= goal:
            return None
        need = max(need, math.ceil(MARGIN * w * n0 / (goal - between)))
    return min(need, n_all)


def precision(steps_L: list[np.ndarray], seq: np.ndarray, n_seq: int) -> float:
    """The largest step's clustered SE of mean L over the SD of the steps' means (trace.json ``L_precision``)."""
    counts = np.bincount(seq, minlength=n_seq)
    ses = np.array([cluster_se(np.bincount(seq, weights=x, minlength=n_seq), counts) for x in steps_L])
    spread = _spread(steps_L)
    return float(np.max(ses) / spread) if spread > 0 else math.nan


def grow(measure, n0: int, n_all: int, n_seq: int, target: float, rounds: int = 3, floor: int = 0
         ) -> tuple[int, float, int]:
    """Rounds of predict → measure: ``measure(n)`` gives (steps_L, seq) of the first n tokens of one nested
    draw. The first measure is at max(n0, floor); each round grows by at most ``GROWTH``×. Stops when the
    measured precision reaches ``target``, every token is used, or ``rounds`` grow steps are spent.
    Returns (tokens, precision, grow steps)."""
    n, k = min(max(n0, floor), n_all), 0
    steps_L, seq = measure(n)
    p = precision(steps_L, seq, n_seq)
    while p > target and n < n_all and k < rounds:
        want = tokens_for_precision(steps_L, seq, n_seq, target, n_all)
        n = min(n_all, GROWTH * n, max(n_all if want is None else want, n + 1))
        steps_L, seq = measure(n)
        p, k = precision(steps_L, seq, n_seq), k + 1
    return n, p, k
