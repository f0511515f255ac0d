"""The slope a of log σ_k on log k over one rank window (σ_k ∝ k^-a, docs/method.md §2): the weighted fit, its MLE
cross-check, the difference between the window's two halves (curvature), and the same slopes of resampled spectra."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spinal.analyze.contraction.spectrum import SpectrumFit

# The MLE's KS scan tries at most this many xmin candidates (geometric in rank) and keeps at
# least half the window above xmin, so its tail is never a handful of points.
MLE_CANDIDATES = 128
# Each half of the window needs this many ranks for its own slope (the curvature); 4 keeps a two-parameter
# fit over-determined twice over.
MIN_HALF_RANKS = 4


@dataclass(frozen=True)
class WlsFit:
    """Weighted least squares of log σ_k on log k."""

    a: float  # minus the slope
    r2: float  # weighted R²


@dataclass(frozen=True)
class MleFit:
    """Clauset-style power-law MLE on λ = σ², converted to a."""

    a: float
    xmin: float  # λ at the KS-selected lower cut
    k_xmin: int  # its rank
    ks: float  # KS distance of the fit above xmin


def _bulk_ranks(k_lo: int, k_hi: int, spikes: int) -> np.ndarray:
    """Ranks k_lo..k_hi counted within the bulk (k − spikes): the bulk's first value is its rank 1.

    Without this, s spikes shift a k^-a bulk to (k − s)^-a and steepen the fit (a = 1.5 with one
    massive coordinate: 1.547 on log k, 1.502 on log(k − 1)).
    """
    if k_lo <= spikes:
        raise ValueError(f"window starts at k_lo={k_lo}, inside the {spikes} spikes; start at ≥ {spikes + 1}")
    return np.arange(k_lo, k_hi + 1, dtype=np.float64) - spikes


def _wls(y: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and weighted R² of each row of ``y`` (…, m) on log k (m,), weights 1/k as α-ReQ."""
    x, w = np.log(k), 1.0 / k
    xm, ym = np.average(x, weights=w), np.average(y, weights=w, axis=-1)[..., None]
    sxx, sxy, syy = (w * (x - xm) ** 2).sum(), (w * (x - xm) * (y - ym)).sum(-1), (w * (y - ym) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(syy > 0, sxy**2 / (sxx * syy), np.nan)  # weighted R²; undefined for a flat window
    return sxy / sxx, r2


def fit_wls(sv: np.ndarray, k_lo: int, k_hi: int, spikes: int = 0) -> WlsFit:
    """Slope of log σ_k on log k over 1-based k in [k_lo, k_hi], weights 1/k as α-ReQ; returns a = −slope and R²."""
    k = _bulk_ranks(k_lo, k_hi, spikes)
    y = np.log(np.asarray(sv, dtype=np.float64)[k_lo - 1 : k_hi])
    if k.size < 2 or y.size != k.size or not np.isfinite(y).all():
        raise ValueError(f"need ≥ 2 positive σ in [{k_lo}, {k_hi}], have {y.size} of {len(sv)}")
    slope, r2 = _wls(y, k)
    return WlsFit(a=float(-slope), r2=float(r2))


def fit_mle(sv: np.ndarray, k_lo: int, k_hi: int, spikes: int = 0) -> MleFit:
    """Continuous power-law MLE on λ = σ² over the window, xmin chosen by minimum KS distance.

    The density is p(λ) ∝ λ^-α with α = α_ESD, so a = 1/(2β), β = α − 1. For a cut xmin = λ_j the
    sample is λ_{k_lo..j}; the m = k_lo − 1 − spikes bulk values above the window are censored
    (counted, not used), and ``1/β̂ = [m ln(λ_{k_lo}/xmin) + Σ ln(λ_k/xmin)] / (j − k_lo)``: Clauset
    et al. (2009) eq. 3.1 with that censoring and the n−1 small-sample correction (the trimmed
    Hill estimator, unbiased under Pareto sampling). KS compares the empirical CDF of the
    j − spikes bulk values ≥ xmin with ``1 − (λ/xmin)^-β`` at the observed points.
    """
    k = _bulk_ranks(k_lo, k_hi, spikes)
    lam = np.asarray(sv, dtype=np.float64)[k_lo - 1 : k_hi] ** 2  # (rank,) λ in the window
    if lam.size < 4 or not (lam > 0).all():
        raise ValueError(f"need ≥ 4 positive σ in [{k_lo}, {k_hi}], have {lam.size}")
    m = k_lo - 1 - spikes
    log_lam = np.log(lam)
    first = max(lam.size // 2, 3)  # keep ≥ half the window above xmin (MLE_CANDIDATES note)
    cands = np.unique(np.geomspace(first, lam.size, num=min(MLE_CANDIDATES, lam.size - first + 1)).round())
    best = MleFit(a=math.nan, xmin=math.nan, k_xmin=0, ks=math.inf)
    for n_obs in cands.astype(int):  # sample = λ_{k_lo} ≥ … ≥ λ_{k_lo + n_obs − 1} = xmin
        logs = log_lam[:n_obs] - log_lam[n_obs - 1]  # ln(λ/xmin) ≥ 0
        inv_beta = (m * logs[0] + logs.sum()) / (n_obs - 1)
        if inv_beta <= 0:
            continue
        n_ge = k[n_obs - 1]  # bulk values ≥ xmin, censored ones included
        model = 1.0 - np.exp(-logs / inv_beta)  # fitted CDF at the observed points
        emp_hi = (n_ge - k[:n_obs] + 1) / n_ge  # empirical CDF at each point, and just below it
        ks = float(max(np.abs(emp_hi - model).max(), np.abs(emp_hi - 1.0 / n_ge - model).max()))
        if ks < best.ks:
            best = MleFit(a=inv_beta / 2.0, xmin=float(lam[n_obs - 1]), k_xmin=k_lo + n_obs - 1, ks=ks)
    return best if math.isfinite(best.ks) else MleFit(a=math.nan, xmin=math.nan, k_xmin=0, ks=math.nan)


def _halves(k_lo: int, k_hi: int, spikes: int) -> int | None:
    """The rank splitting the window at the geometric middle of its bulk ranks; None if a half is too short."""
    mid = int(round(math.sqrt((k_lo - spikes) * (k_hi - spikes)))) + spikes
    return None if mid - k_lo + 1 < MIN_HALF_RANKS or k_hi - mid + 1 < MIN_HALF_RANKS else mid


def curvature(sv: np.ndarray, k_lo: int, k_hi: int, spikes: int = 0) -> float:
    """a over the window's upper half minus a over its lower half, split at the geometric middle of the bulk
    ranks: 0 for a straight power law, > 0 where the spectrum bends down (steeper at high ranks), < 0 where it
    flattens; NaN when a half holds fewer than MIN_HALF_RANKS ranks. R² ≥ 0.98 passes bends of 0.07–0.33 on
    real spectra (SmolLM2-135M), so this, with its bootstrap interval, is what says whether a is one slope."""
    mid = _halves(k_lo, k_hi, spikes)
    if mid is None:
        return math.nan
    return fit_wls(sv, mid, k_hi, spikes).a - fit_wls(sv, k_lo, mid, spikes).a


def fit_replicates(spectra: np.ndarray, fit: SpectrumFit) -> tuple[np.ndarray, np.ndarray]:
    """a and curvature (resample,) of resampled spectra (resample, ≥ k_hi) of eigenvalues, in ``fit``'s window.

    Replicates keep the point estimate's window and spikes (analyze/contraction/influence.py gives spectra whose ranks
    are the full sample's); NaN throughout when the point estimate has no fit.
    """
    n = spectra.shape[0]
    if n == 0 or not math.isfinite(fit.a_wls):
        return np.full(n, math.nan), np.full(n, math.nan)
    off = fit.spikes if fit.k_lo > fit.spikes else 0
    with np.errstate(divide="ignore"):
        y = 0.5 * np.log(np.asarray(spectra, dtype=np.float64)[:, : fit.k_hi])  # log σ
    slope = lambda lo, hi: _wls(y[:, lo - 1 : hi], _bulk_ranks(lo, hi, off))[0]  # noqa: E731
    a = -slope(fit.k_lo, fit.k_hi)
    mid = _halves(fit.k_lo, fit.k_hi, off)
    curv = np.full(n, math.nan) if mid is None else slope(fit.k_lo, mid) - slope(mid, fit.k_hi)
    return a, curv

