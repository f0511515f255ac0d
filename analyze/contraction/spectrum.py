"""From a layer's Gram eigenvalues to its rank-decay exponent a, with ``σ_k ∝ k^-a`` (docs/method.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spinal.analyze.contraction.moments import GramResult
from spinal.analyze.contraction.slopes import MleFit, curvature, fit_mle, fit_wls
from spinal.dtypes import half_ulp


# A ratio σ_k/σ_{k+1} above SPIKE_GAP marks σ_1..σ_k as spikes. An unbroken power law gives
# (1 + 1/k)^a ≤ 2^a, i.e. ≤ 4 for any a ≤ 2 (the largest at k = 1); massive activations give
# 10–1000 (docs/method.md §2, "Spikes"). 5 sits between the two.
SPIKE_GAP = 5.0
# Spikes are looked for among the first min(SPIKE_MAX, rank // 4) values only: massive
# activations live in a handful of channels, and far-tail gaps are rank or rounding effects.
SPIKE_MAX = 16

# The window ends where σ_k ≤ FLOOR_MULTIPLE × the noise floor. Measured on bf16-rounded
# H = Z·diag(k^-a)·Qᵀ (N×d = 16384×256 and 4096×512, with and without a common offset 3× the rms),
# true a = 2 came out as 1.06–1.80 at multiple 1, 1.86–1.97 at 2, 1.96–1.99 at 3 and 1.975–1.995
# at 4 (a = 1.5: 1.491–1.501); 6 gained nothing and cut windows below MIN_RANKS.
FLOOR_MULTIPLE = 4.0

# Status "too-few-ranks" (NaN exponents) when the window holds fewer than MIN_RANKS ranks or
# spans less than MIN_SPAN in bulk rank (k_hi/k_lo). The slope's spread depends mostly on the
# span: sampled power laws (N = 300–600, d = 1024–2048, 6 seeds) gave sd 0.05–0.13 over
# [30, 39] (×1.3), 0.02–0.04 over [30, 60] and 0.04–0.05 over [13, 26] (×2), 0.06–0.09 over [5, 10].
MIN_RANKS = 10
MIN_SPAN = 2.0
# Status "poor-fit" below this weighted R² of log σ on log k, or when |a_mle − a_wls| exceeds
# MAX_MLE_GAP·a_wls; the measurements behind both are in fit_spectrum's docstring.
MIN_R2 = 0.98
MAX_MLE_GAP = 0.15


def singular_values(eigenvalues: np.ndarray) -> np.ndarray:
    """σ = √λ, descending, with rounding negatives clipped to 0."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    return np.sqrt(np.clip(np.sort(ev)[::-1], 0.0, None))


def count_spikes(sv: np.ndarray) -> int:
    """Number of leading σ that stand apart from the bulk: the largest k ≤ min(16, rank/4) with σ_k/σ_{k+1} > 5."""
    sv = np.asarray(sv, dtype=np.float64)
    k_max = min(SPIKE_MAX, sv.size // 4)
    head, nxt = sv[:k_max], sv[1 : k_max + 1]
    gaps = np.flatnonzero((nxt > 0) & (head > SPIKE_GAP * nxt))  # a zero σ_{k+1} is rank loss, not a spike
    return int(gaps[-1]) + 1 if gaps.size else 0


def noise_floor(sv: np.ndarray, n_tokens: int, dim: int, rms: float | np.ndarray, storage_dtype: Any,
                spikes: int = 0) -> float:
    """Singular value below which the stored spectrum is rounding: the larger of storage noise and solver error.

    Storage: a per-entry error uniform in ±2^-p·|h| has std 2^-p·rms/√3 and an N×d matrix of it
    has singular values up to std·(√N + √d) (docs/method.md §2). ``rms`` may be per coordinate (dim,):
    the ``spikes`` largest columns are then dropped, since a massive channel's rounding noise lies
    along its own spike direction, not in the bulk. Solver: float64 ``eigvalsh`` of the Gram errs
    in λ by about eps·λ₁ (measured 0.04–0.2·eps·λ₁ at d = 256 with a 1e4–1e7× spike; LAPACK's
    bound grows with d, taken here as √d), so σ_k ≤ √(√d·eps)·σ₁ are mostly rounding.
    """
    rms = np.atleast_1d(np.asarray(rms, dtype=np.float64))
    if rms.size > 1:
        rms = np.sort(rms)[::-1][spikes:] if spikes < rms.size else rms
    rms_bulk = math.sqrt(float(np.mean(rms**2)))
    std = half_ulp(storage_dtype) * rms_bulk / math.sqrt(3.0)  # bf16 2^-8, fp16 2^-11, fp32 2^-24, fp64 2^-53
    storage = std * (math.sqrt(n_tokens) + math.sqrt(dim))
    solver = math.sqrt(math.sqrt(dim) * np.finfo(np.float64).eps) * (float(sv[0]) if len(sv) else 0.0)
    return max(storage, solver)


def noise_floor_rank(sv: np.ndarray, n_tokens: int, dim: int, rms: float | np.ndarray, storage_dtype: Any,
                     spikes: int = 0) -> int:
    """Largest k with σ_k above FLOOR_MULTIPLE (4) times ``noise_floor``."""
    floor = FLOOR_MULTIPLE * noise_floor(sv, n_tokens, dim, rms, storage_dtype, spikes)
    above = np.flatnonzero(np.asarray(sv) > floor)
    return int(above[-1]) + 1 if above.size else 0


def default_window(rank: int, spikes: int, floor_rank: int) -> tuple[int, int]:
    """docs/method.md §2 window: ``k_lo = max(spikes + 1, 5, ⌈0.05 r⌉)``, ``k_hi = min(⌊0.5 r⌋, floor rank)``.

    k_lo ≥ 5 skips the head, which no power law describes; k_hi ≤ r/2 because slopes near the rank
    edge are biased (1.0 → 1.38 in METHOD's test).
    """
    k_lo = max(spikes + 1, 5, -(-rank // 20))  # integer ⌈r/20⌉: 0.05·r in floats can round up past it
    k_hi = min(rank // 2, floor_rank)
    return k_lo, k_hi


@dataclass(frozen=True)
class SpectrumFit:
    """One spectrum's exponent, window and diagnostics; a, r2 and the MLE are NaN unless status allows a fit."""

    a_wls: float  # rank-decay exponent a from the weighted fit (the reported value)
    r2: float  # weighted R² of that fit
    a_mle: float  # cross-check: Clauset-style MLE converted to a
    ks: float  # KS distance of the MLE fit
    k_xmin: int  # rank of the MLE's KS-selected lower cut (0 if none)
    k_lo: int  # window, 1-based ranks, inclusive
    k_hi: int
    rank: int  # r: values the spectrum can hold, min(N − 1, d) centered / min(N, d) raw
    spikes: int  # leading values excluded as spikes (count_spikes)
    floor_rank: int  # last rank above FLOOR_MULTIPLE × noise floor
    top1_share: float  # σ₁² / Σσ², the top-1 variance share
    status: str  # "ok", "poor-fit" or "too-few-ranks" (trace_table.py adds "curved", from the bootstrap of curvature)
    curvature: float = math.nan  # a of the window's upper half − a of its lower half (see ``curvature``)


def fit_spectrum(eigenvalues: np.ndarray, *, n_tokens: int, dim: int, rms: float | np.ndarray,
                 storage_dtype: Any, centered: bool = True, window: tuple[int, int] | None = None,
                 min_ranks: int = MIN_RANKS, with_mle: bool = True) -> SpectrumFit:
    """Spikes, noise floor, window and both fits of one spectrum (eigenvalues of the scatter or raw Gram).

    ``with_mle=False`` skips the MLE cross-check (a_mle, ks NaN; status from R² alone): bootstrap
    replicates need only a_wls under the same window rule.

    ``rms`` is the uncentered root-mean-square of the stored entries, scalar or per coordinate
    (dim,), as ``GramResult.column_mean_square ** 0.5`` gives it. ``window`` overrides the default
    (k_lo, k_hi). Status, in order: "too-few-ranks" when the window holds < ``min_ranks`` ranks
    or spans less than MIN_SPAN (×2) in bulk rank; "poor-fit" when R² < MIN_R2 (0.98),
    |a_mle − a_wls| > MAX_MLE_GAP (0.15)·a_wls, or a given window starts inside the spikes
    (ranks are then not re-based, see slopes.py ``_bulk_ranks``); else "ok".

    Measured on H = Z·diag(k^-a)·Qᵀ, a = 0.3–2, N×d from 16384×256 to 100×256 and 300×2048,
    float64 and bf16: R² ≥ 0.983, except a = 0.3 with N ≤ 0.6·d (0.971–0.984; there N < d
    biases the slope itself), and |a_mle − a_wls| ≤ 0.084·a. Non-power-laws: σ_k = e^(−k/30)
    or e^(−k/100) R² 0.92; isotropic noise R² 0.92–0.95 (a 0.04–0.22); a 0.5 → 1.5 bend at
    k = 40 R² 0.94, gap 0.25 (at 2048×512 the window starts near the bend: R² 0.992, "ok").
    A smoothly curved log-log spectrum (log σ ∝ −(log k)²) keeps R² ≈ 0.993 and is not caught.
    """
    sv = singular_values(eigenvalues)
    rank = min(sv.size, (n_tokens - 1) if centered else n_tokens, dim)
    sv = sv[:rank]
    total = float((sv**2).sum())
    top1 = float(sv[0] ** 2 / total) if total > 0 else math.nan
    spikes = count_spikes(sv)
    floor_rank = noise_floor_rank(sv, n_tokens, dim, rms, storage_dtype, spikes)
    if window is None:
        k_lo, k_hi = default_window(rank, spikes, floor_rank)
    else:
        k_lo, k_hi = (int(k) for k in window)
        if not 1 <= k_lo <= k_hi <= rank:
            raise ValueError(f"window {window} must satisfy 1 ≤ k_lo ≤ k_hi ≤ rank = {rank}")
    base = dict(k_lo=k_lo, k_hi=k_hi, rank=rank, spikes=spikes, floor_rank=floor_rank, top1_share=top1)
    offset = spikes if k_lo > spikes else 0  # bulk ranks, unless a given window holds spikes
    short = k_hi - k_lo + 1 < max(min_ranks, 4) or (k_hi - offset) < MIN_SPAN * (k_lo - offset)
    if short or not sv[k_hi - 1] > 0:
        return SpectrumFit(a_wls=math.nan, r2=math.nan, a_mle=math.nan, ks=math.nan, k_xmin=0,
                           status="too-few-ranks", **base)
    wls = fit_wls(sv, k_lo, k_hi, offset)
    mle = fit_mle(sv, k_lo, k_hi, offset) if with_mle else MleFit(math.nan, math.nan, 0, math.nan)
    agree = not with_mle or (math.isfinite(mle.a) and abs(mle.a - wls.a) <= MAX_MLE_GAP * abs(wls.a))
    status = "ok" if wls.r2 >= MIN_R2 and agree and offset == spikes else "poor-fit"
    return SpectrumFit(a_wls=wls.a, r2=wls.r2, a_mle=mle.a, ks=mle.ks, k_xmin=mle.k_xmin, status=status,
                       curvature=curvature(sv, k_lo, k_hi, offset), **base)


def with_curvature(status: str, lo: float, hi: float) -> str:
    """"curved" for an "ok" fit whose curvature's 95 % bootstrap interval excludes 0: a is then an average slope
    over a bend, not the exponent of one power law."""
    return "curved" if status == "ok" and (lo > 0 or hi < 0) else status


def fit_gram(result: GramResult, *, storage_dtype: Any, centered: bool = True,
             window: tuple[int, int] | None = None, min_ranks: int = MIN_RANKS, with_mle: bool = True,
             eigenvalues: np.ndarray | None = None) -> SpectrumFit:
    """``fit_spectrum`` of an accumulated layer, taking N, d and the per-coordinate rms from it (and its
    eigenvalues, unless already computed: ``eigenvalues``)."""
    ev = result.eigenvalues(centered) if eigenvalues is None else eigenvalues
    return fit_spectrum(ev, n_tokens=result.n, dim=result.dim,
                        rms=np.sqrt(result.column_mean_square), storage_dtype=storage_dtype,
                        centered=centered, window=window, min_ranks=min_ranks, with_mle=with_mle)
