"""The standard error of a where a layer holds few tokens for its width: an exact jackknife, calibrated by simulation.

Above CALIBRATE_BELOW·d tokens the interval's SE is the first-order block bootstrap's (analyze/contraction/influence.py):
replicates that keep every token, centred on â. Where N ≤ 8·d that approximation is off both ways. On Gaussian
layers its SE is 1.2–1.8× the true sd(â) at N ≤ 2·d (it misses how sample eigenvalues repel); on real layers it
can be too small: over 20 disjoint real subsamples of N = 2·d tokens each (SmolLM2-135M,
benchmarks/check_real_coverage.py) the true sd(â) was 0.79–1.43× the first-order SE, above 1.2× in three of five
layers. The exact delete-one-block jackknife over the same 16 blocks, one float64 eigensolve per left-out block,
was 0.74–1.01× there: never too small. On Gaussian layers it is conservative (Efron–Stein), sd/SE 0.77 at
N = d/2, 0.92 at 2·d, and more so with unequal blocks. So where N ≤ 8·d:

    SE = κ · SE_jackknife,    κ = sd(â over S simulated layers) / median(SE_jackknife over them)

the simulated layers Gaussian with the population spectrum the layer's fit implies (``population``), the same N, d
and block sizes, each fitted and jackknifed exactly as the real one (same window, same spikes): κ removes the
jackknife's own small-sample bias, SE_jackknife carries whatever the real data does that no Gaussian model has.
The replicates are scaled about â by ``c = SE / SE_first-order`` (``calibrate``, trace column se_scale), the
split-half null spread with them, so what is built from one trace's replicates (coherence) carries the same scale.
Two checkpoints' Δa take the paired exact jackknife instead (``paired``, Trace.paired_boot): the same block left
out of both, from the leave-one-out values each trace keeps, so what they share cancels exactly.

κ from one layer is noisy (sd(â) from S = 24 draws: ±15 %; one real layer gave 0.66, 0.84 and 1.12 for three
seeds), but it barely depends on the layer (with common random numbers the 31 layers of SmolLM2-135M, a from 0.57
to 0.79, gave within 0.5 % of one value): so the trace spreads SIMS simulated layers over its layers
(``per_layer``), each layer simulating from its own seeded stream (seeds.rng keyed by the layer), and uses the
pooled

    κ = √(Σ_ℓ (S_ℓ − 1)·κ_ℓ² / Σ_ℓ (S_ℓ − 1))        (``pooled``, over the layers that were simulated)

uncertain by ≈ 1/√(2·Σ(S_ℓ − 1)): 7 % for the default 96. ``calibration_sims = 0`` keeps the jackknife and drops
κ (= 1): conservative, never narrow. Above 8·d nothing of this runs: a 70B layer at N = 32·d costs nothing more.
Coverage on synthetic layers (sequences, massive coordinates, bf16 rounding) is in benchmarks/bench_ci.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.moments import GramResult, resample
from spinal.analyze.contraction.intervals import replicate_se
from spinal.analyze.contraction.slopes import fit_replicates
from spinal.analyze.contraction.spectrum import SpectrumFit

# Calibrate where N ≤ CALIBRATE_BELOW·d. Coverage of E[â] (d = 128, a = 0.5, 100 datasets) by first-order replicates
# alone: N = 64 100 %, 256 98 %, 1024 99 %, 4096 93 %; on real layers at 2·d their SE was up to 1.43× too small.
CALIBRATE_BELOW = 8
# Simulated layers per trace, spread over its layers (``per_layer``): the pooled κ is uncertain by ≈ 1/√(2·Σ(S_ℓ−1)),
# 7 % for one layer of 96 or 31 layers of 4, 8 % for 81 layers of 2, whatever the depth; the cost is bounded too.
SIMS = 96
# Simulated layers per layer at least (one degree of freedom each): a layer's own κ_ℓ needs two draws.
MIN_PER_LAYER = 2


def per_layer(total: int, layers: int) -> int:
    """Simulated layers each of ``layers`` runs for a trace budget of ``total``: ⌈total/layers⌉, at least
    MIN_PER_LAYER; 0 where ``total`` is 0 (the jackknife alone)."""
    return 0 if total <= 0 else max(MIN_PER_LAYER, -(-total // max(1, layers)))


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


def leave_one_out(res: GramResult, fit: SpectrumFit) -> np.ndarray:
    """(n_blocks,) â without each block: the exact spectrum of the other blocks' tokens (one eigensolve each),
    fitted in ``fit``'s window; NaN for empty blocks, and throughout without a fit or ≥ 2 filled blocks."""
    out = np.full(res.n_blocks, np.nan)
    filled = np.flatnonzero(res.block_sizes > 0)
    if filled.size < 2 or not math.isfinite(fit.a_wls):
        return out
    for i, b in enumerate(filled):
        out[b] = fit_replicates(resample(res, np.delete(filled, i)).eigenvalues()[None, : fit.k_hi], fit)[0][0]
    return out


def spread(left: np.ndarray) -> float:
    """The delete-one-group jackknife SE ``√((g−1)/g · Σ_b (x_(b) − mean)²)`` of leave-one-out values over their
    g finite entries (NaN with fewer than 2)."""
    x = np.asarray(left, dtype=np.float64)
    x = x[np.isfinite(x)]
    g = x.size
    return float(np.sqrt((g - 1) / g * np.sum((x - x.mean()) ** 2))) if g >= 2 else math.nan


def jackknife_se(res: GramResult, fit: SpectrumFit) -> float:
    """The exact delete-one-block jackknife SE of a in ``fit``'s window (``spread`` of ``leave_one_out``)."""
    return spread(leave_one_out(res, fit))


def paired(replicates: np.ndarray, point: float, left_a: np.ndarray, left_b: np.ndarray, kappa_a: float,
           kappa_b: float, groups: int) -> np.ndarray:
    """Δ replicates (b − a, paired by block draws) rescaled about ``point`` so their SE is κ times the paired exact
    jackknife's, ``spread(left_b − left_a)``: the same blocks left out of both checkpoints, so what they share
    cancels exactly; κ = √((κ_a² + κ_b²)/2), the two sides' in quadrature mean. Unchanged where either has no
    leave-one-out values or the replicates do not vary."""
    se_jk = spread(np.asarray(left_b, dtype=np.float64) - np.asarray(left_a, dtype=np.float64))
    replicates = np.asarray(replicates, dtype=np.float64)
    if replicates.size < 2 or not math.isfinite(se_jk):
        return replicates
    se = replicate_se(replicates, groups)
    if not se > 0:
        return replicates
    return calibrate(replicates, point, math.sqrt((kappa_a**2 + kappa_b**2) / 2) * se_jk / se)


@dataclass(frozen=True)
class Simulated:
    """One layer's simulations: sd(â) and the median jackknife SE over ``count`` simulated layers."""

    sd: float
    median_se: float
    count: int

    @property
    def kappa(self) -> float:
        """This layer's own κ = sd(â)/median(SE_jackknife)."""
        return self.sd / self.median_se


def simulate(res: GramResult, eigenvalues: np.ndarray, fit: SpectrumFit, rng: np.random.Generator,
             sims: int = SIMS) -> Simulated | None:
    """sd(â) and median(SE_jackknife) over ``sims`` simulated layers like ``res`` (module docstring); None where the
    layer is not calibrated (``needed``), has no fit, fewer than 2 filled blocks, or fewer than 2 simulated fits."""
    filled = int(np.count_nonzero(res.block_sizes))
    if sims < 2 or filled < 2 or not needed(res.n, res.dim) or not math.isfinite(fit.a_wls):
        return None
    scale = np.sqrt(population(eigenvalues, fit, res.n, res.dim)).astype(np.float32)
    ids = np.repeat(np.arange(res.n_blocks), res.block_sizes)
    points, ses = np.empty(sims), np.empty(sims)
    for i in range(sims):
        h = rng.standard_normal((res.n, res.dim), dtype=np.float32) * scale  # rotation-free: Gaussian spectra are
        sim = GramAccumulator(res.dim, blocks=res.n_blocks).update(h, ids).finish()  # basis-invariant
        points[i] = fit_replicates(sim.eigenvalues()[None, : fit.k_hi], fit)[0][0]
        ses[i] = jackknife_se(sim, fit)
    ok = np.isfinite(points) & np.isfinite(ses)
    if ok.sum() < 2 or not np.median(ses[ok]) > 0:
        return None
    return Simulated(float(np.std(points[ok], ddof=1)), float(np.median(ses[ok])), int(ok.sum()))


def pooled(layers: Iterable[Simulated | None]) -> float:
    """κ = √(Σ(S − 1)·κ_ℓ² / Σ(S − 1)) over the simulated layers (module docstring); 1.0 where none was."""
    done = [s for s in layers if s is not None]
    if not done:
        return 1.0
    df = np.array([s.count - 1 for s in done], dtype=np.float64)
    return float(np.sqrt(np.sum(df * np.array([s.kappa for s in done]) ** 2) / df.sum()))


def scale(kappa: float, se_jackknife: float, se_first_order: float) -> float:
    """c = κ·SE_jackknife / SE_first-order: the factor on the first-order replicates' spread; 1.0 where either SE is
    missing or zero (nothing to scale)."""
    if not (se_first_order > 0 and math.isfinite(se_jackknife) and math.isfinite(kappa)):
        return 1.0
    return kappa * se_jackknife / se_first_order


def calibrate(replicates: np.ndarray, point: float, c: float) -> np.ndarray:
    """Replicates scaled about the point estimate by c: their SD, hence every t interval from them, times c."""
    replicates = np.array(replicates, dtype=np.float64)
    if c == 1.0:
        return replicates
    return point + c * (replicates - point)
