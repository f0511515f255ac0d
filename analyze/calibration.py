"""The bootstrap's standard error of a, calibrated by simulation where the layer holds few tokens for its width.

First-order replicates (analyze/influence.py) keep every token and are centred on â, but where N ≤ 2·d their
spread is 1.2–1.8× the real sd(â): they miss how sample eigenvalues repel, and the 95 % interval covered E[â] at
99.5 % (benchmarks/bench_ci.py). The fix measures that ratio on the layer's own fitted model: S Gaussian layers
with the population spectrum the fit implies, the same N, d and block sizes, each fitted and bootstrapped exactly
as the real one (same window, same spikes, same block draws); then

    c = sd(â over the S simulated layers) / median(bootstrap SE over them)

and the interval is ``a ± t₁₅·c·SE``: the replicates are scaled about â by c (``calibrate``), so every paired
statistic built from them (Δa, stability, coherence) is scaled the same way. Above CALIBRATE_BELOW·d tokens c is
1 within its own noise (N = 32·d: median 1.0), so the simulation is skipped and c = 1: a 70B layer (N = 32·d) costs
nothing more.

The simulated tokens are independent, the real ones come in sequences: c corrects the first-order approximation,
whose error is a property of N, d and the spectrum, while the real replicates keep the between-sequence spread.
Coverage with sequences sharing 30 % of their variance, massive coordinates and bf16 rounding is in
benchmarks/bench_ci.py.
"""

from __future__ import annotations

import math

import numpy as np

from spinal.analyze.gram import GramAccumulator
from spinal.analyze.influence import bootstrap_weights, eigen
from spinal.analyze.moments import GramResult
from spinal.analyze.spectrum import SpectrumFit, fit_replicates, replicate_se

# Calibrate where N ≤ CALIBRATE_BELOW·d. Coverage of E[â] (d = 128, a = 0.5, 100 datasets) without → with: N = 64
# 100 → 96 %, 256 98 → 95 %, 1024 99 → 96 %, 4096 93 → 92 % (c's median there ≈ 1.0, its noise only adds spread).
CALIBRATE_BELOW = 8
# Simulated layers per calibration: sd(â) from S draws is uncertain by ≈ 1/√(2(S−1)), 15 % at 24.
SIMS = 24
# Bootstrap replicates per simulated layer: its SE enters through a median over SIMS, so 100 suffice.
SIM_BOOT = 100


def needed(n_tokens: int, dim: int) -> bool:
    """Whether a layer of ``n_tokens`` tokens and width ``dim`` is calibrated (N ≤ CALIBRATE_BELOW·d)."""
    return n_tokens <= CALIBRATE_BELOW * dim


def population(eigenvalues: np.ndarray, fit: SpectrumFit, n_tokens: int, dim: int) -> np.ndarray:
    """(dim,) per-token variances of the fitted model: ``λ_k = λ̂_{k_lo}·(k/k_lo)^(−2â)`` on bulk ranks from k_lo to
    d, the sample's own values above the window where they are larger (the head and spikes no power law holds)."""
    off = fit.spikes if fit.k_lo > fit.spikes else 0
    k = np.arange(1, dim + 1, dtype=np.float64)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        law = lam[fit.k_lo - 1] * ((k - off) / (fit.k_lo - off)) ** (-2.0 * fit.a_wls)
    law[: fit.k_lo - 1] = np.maximum(np.nan_to_num(law[: fit.k_lo - 1], posinf=0.0), lam[: fit.k_lo - 1])
    return law / n_tokens


def se_scale(res: GramResult, eigenvalues: np.ndarray, fit: SpectrumFit, rng: np.random.Generator,
             sims: int = SIMS) -> float:
    """c = sd(â)/median(SE) over ``sims`` simulated layers like ``res`` (module docstring); 1.0 where the layer is not
    calibrated (``needed``), has no fit, or fewer than 2 filled blocks."""
    filled = int(np.count_nonzero(res.block_sizes))
    if sims < 2 or filled < 2 or not needed(res.n, res.dim) or not math.isfinite(fit.a_wls):
        return 1.0
    scale = np.sqrt(population(eigenvalues, fit, res.n, res.dim)).astype(np.float32)
    ids = np.repeat(np.arange(res.n_blocks), res.block_sizes)
    points, ses = np.empty(sims), np.empty(sims)
    for i in range(sims):
        h = rng.standard_normal((res.n, res.dim), dtype=np.float32) * scale  # rotation-free: Gaussian spectra are
        sim = GramAccumulator(res.dim, blocks=res.n_blocks).update(h, ids).finish()  # basis-invariant
        eig = eigen(sim)
        points[i] = fit_replicates(eig.eigenvalues[None, : fit.k_hi], fit)[0][0]
        boot = fit_replicates(bootstrap_weights(sim, rng, SIM_BOOT) @ eig.shares(sim, fit.k_hi), fit)[0]
        ses[i] = replicate_se(boot, filled)
    ok = np.isfinite(points) & np.isfinite(ses)
    if ok.sum() < 2 or not np.median(ses[ok]) > 0:
        return 1.0
    return float(np.std(points[ok], ddof=1) / np.median(ses[ok]))


def calibrate(replicates: np.ndarray, point: float, c: float) -> np.ndarray:
    """Replicates scaled about the point estimate by c: their SD, hence every t interval from them, times c."""
    replicates = np.array(replicates, dtype=np.float64)
    if c == 1.0:
        return replicates
    return point + c * (replicates - point)
