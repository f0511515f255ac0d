"""One layer's contraction: a streaming float64 Gram pass over the store, both fits, the bootstrap replicates and the
split-half null, all from one eigendecomposition (analyze/contraction/influence.py); where the layer holds ≤ 8·d tokens the
replicates' spread set to a simulation-calibrated exact jackknife's (analyze/contraction/calibration.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from spinal.analyze.contraction import calibration
from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.influence import bootstrap_weights, eigen, half_weights
from spinal.analyze.contraction.moments import GramResult
from spinal.analyze.contraction.ranks import ranks, resampled_ranks
from spinal.analyze.seeds import Purpose, rng
from spinal.analyze.contraction.intervals import replicate_se
from spinal.analyze.contraction.slopes import fit_replicates
from spinal.analyze.contraction.spectrum import SpectrumFit, fit_gram, singular_values
from spinal.store.contract import Store


@dataclass(frozen=True)
class LayerSpectrum:
    layer: int
    n_tokens: int
    centered: SpectrumFit
    raw: SpectrumFit
    boot: np.ndarray  # (n_boot,) a_wls of block-bootstrap resamples, centered, scaled about a by se_scale
    null_diffs: np.ndarray  # (null_splits,) a(half 1) − a(half 2), to first order, times se_scale like boot
    sv: np.ndarray  # centered singular values, descending (for plots)
    curv_boot: np.ndarray  # (n_boot,) curvature of the same resamples
    blocks: int  # filled sequence blocks the resamples draw from (the intervals' degrees of freedom + 1)
    se_scale: float = 1.0  # c of analyze/contraction/calibration.py: the factor already applied to boot's spread (1: none)
    se_first: float = math.nan  # the first-order replicates' SE, before c
    kappa: float = 1.0  # the jackknife's calibration κ in c (this layer's own, or the trace's pooled once ``pool``ed)
    simulated: calibration.Simulated | None = None  # this layer's own simulations (None: none run)
    leave_one_out: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (blocks,) â without each block (NaN:
    # empty block; empty array where N > 8·d): paired comparisons take their exact paired jackknife from these
    rank_values: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))  # (2,) effective rank, RankMe
    rank_boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (n_boot, 2) their first-order
    # replicates on the same block draws as boot (analyze/contraction/ranks.py), not calibrated

    @property
    def se_jackknife(self) -> float:
        """The exact delete-one-block jackknife SE of a (NaN where it was not run: N > 8·d, or no fit)."""
        return calibration.spread(self.leave_one_out)

    @property
    def first_order(self) -> np.ndarray:
        """The first-order replicates before c: ``boot`` scaled back about a."""
        return self.centered.a_wls + (self.boot - self.centered.a_wls) / self.se_scale

    @property
    def kappa_layer(self) -> float:
        """This layer's own κ (1.0 where it was not simulated)."""
        return self.simulated.kappa if self.simulated is not None else 1.0


def accumulate(store: Store, layer: int, blocks: int) -> GramResult:
    """One streaming pass over a layer's done units; sequence s feeds block s mod ``blocks``."""
    acc = GramAccumulator(int(store.meta["dim"]), blocks=blocks)
    for h, seq in store.iter_layer(layer):  # h: (token, dim) float32 decoded
        acc.update(h, seq % blocks)
    return acc.finish()


def _filled(res: GramResult) -> int:
    return int(np.count_nonzero(res.block_sizes))


def bootstrap_a(res: GramResult, shares: np.ndarray, fit: SpectrumFit, rng: np.random.Generator,
                n_boot: int) -> np.ndarray:
    """(a, curvature) of ``n_boot`` block-bootstrap resamples, (n_boot, 2), docs/method.md §2 "Uncertainty": first-order
    spectra in the point estimate's window (analyze/contraction/influence.py); none with < 2 filled blocks."""
    if _filled(res) < 2:
        return np.zeros((0, 2))
    return _a_replicates(bootstrap_weights(res, rng, n_boot), shares, fit)


def _a_replicates(weights: np.ndarray, shares: np.ndarray, fit: SpectrumFit) -> np.ndarray:
    return np.stack(fit_replicates(weights @ shares, fit), axis=1)


def split_half_null(res: GramResult, shares: np.ndarray, fit: SpectrumFit, rng: np.random.Generator,
                    splits: int) -> np.ndarray:
    """a(half 1) − a(half 2) over ``splits`` random halvings of the filled blocks (splits,): docs/method.md §4's null
    spread, each half's spectrum to first order like the bootstrap's."""
    if _filled(res) < 2:
        return np.zeros(0)
    one, two = half_weights(res, rng, splits)
    return fit_replicates(one @ shares, fit)[0] - fit_replicates(two @ shares, fit)[0]


def layer_spectrum(store_path: str, layer: int, *, blocks: int, n_boot: int, null_splits: int, seed: int,
                   window: tuple[int, int] | None, calibration_sims: int = calibration.SIMS,
                   rank_intervals: bool = True) -> LayerSpectrum:
    store = Store.open(store_path)
    return spectrum_of(accumulate(store, layer, blocks), layer, storage_dtype=store.dtype, n_boot=n_boot,
                       null_splits=null_splits, seed=seed, window=window, calibration_sims=calibration_sims,
                       rank_intervals=rank_intervals)


def spectrum_of(res: GramResult, layer: int, *, storage_dtype: Any, n_boot: int, null_splits: int, seed: int,
                window: tuple[int, int] | None, calibration_sims: int = calibration.SIMS,
                rank_intervals: bool = True) -> LayerSpectrum:
    """Both fits, ``n_boot`` bootstrap replicates and ``null_splits`` split-halves of accumulated moments: one
    ``eigh`` (centered, with vectors) and one ``eigvalsh`` (raw), whatever the replicate counts; where N ≤ 8·d, one
    ``eigvalsh`` per filled block more (the exact jackknife) and ``calibration_sims`` simulated layers, each its own
    Gram and 1 + blocks ``eigvalsh`` (0: κ = 1, the jackknife alone). ``rank_intervals``: the effective rank's and
    RankMe's replicates too, from every rank's block shares (a's replicates need only its window's)."""
    kw = dict(storage_dtype=storage_dtype, window=window)
    eig = eigen(res)
    centered = fit_gram(res, centered=True, eigenvalues=eig.eigenvalues, **kw)
    raw = fit_gram(res, centered=False, **kw)
    resampled = (n_boot or null_splits) and np.isfinite(centered.a_wls)
    w = bootstrap_weights(res, rng(seed, Purpose.BOOTSTRAP), n_boot) if _filled(res) >= 2 else np.zeros((0, 1))
    # (block, rank): each block's share of every eigenvalue where replicates are drawn (the ranks read them all)
    every = w.shape[0] and rank_intervals
    full = eig.shares(res, eig.eigenvalues.size if every else centered.k_hi if resampled else 0)
    shares = full[:, : centered.k_hi if resampled else 0]  # (block, k_hi): a's window
    boot = _a_replicates(w, shares, centered) if _filled(res) >= 2 else np.zeros((0, 2))
    null = split_half_null(res, shares, centered, rng(seed, Purpose.NULL_SPLITS), null_splits)
    se_first = replicate_se(boot[:, 0], _filled(res)) if boot.shape[0] > 1 else math.nan
    left, sim = np.zeros(0), None  # leave-one-out values only where N ≤ 8·d (NaN throughout without a fit)
    if boot.shape[0] > 1 and calibration.needed(res.n, res.dim):
        left = calibration.leave_one_out(res, centered)
        if calibration_sims:
            sim = calibration.simulate(res, eig.eigenvalues, centered, rng(seed, Purpose.CALIBRATION, layer),
                                       calibration_sims)
    kappa = calibration.pooled([sim])
    c = calibration.scale(kappa, calibration.spread(left), se_first)
    return LayerSpectrum(layer, res.n, centered, raw, calibration.calibrate(boot[:, 0], centered.a_wls, c),
                         c * null, singular_values(eig.eigenvalues), boot[:, 1].copy(), _filled(res), c, se_first,
                         kappa, sim, left, ranks(eig.eigenvalues),
                         resampled_ranks(w, full) if every else np.zeros((0, 2)))


def pool(spectra: list[LayerSpectrum]) -> list[LayerSpectrum]:
    """The layers of one trace with one κ, pooled over all their simulations (analyze/contraction/calibration.py ``pooled``):
    each layer's c recomputed with it, its replicates rescaled about its a (and its null spread) from the old c to
    the new."""
    kappa = calibration.pooled(s.simulated for s in spectra)
    out = []
    for s in spectra:
        if not math.isfinite(s.se_jackknife):  # not calibrated (N > 8·d, no fit, no replicates)
            out.append(s)
            continue
        c = calibration.scale(kappa, s.se_jackknife, s.se_first)
        out.append(replace(s, boot=calibration.calibrate(s.boot, s.centered.a_wls, c / s.se_scale),
                           null_diffs=s.null_diffs * (c / s.se_scale), se_scale=c, kappa=kappa))
    return out


class Replicates(NamedTuple):
    """One checkpoint's layer as a paired comparison reads it: a row of a Trace, or a LayerSpectrum."""

    a: float  # the point estimate â
    boot: np.ndarray  # (n_boot,) its bootstrap replicates (calibrated where N ≤ 8·d)
    leave_one_out: np.ndarray  # (blocks,) â without each block; empty where N > 8·d
    kappa: float  # the calibration κ of its trace


def paired_replicates(x: Replicates, y: Replicates, groups: int) -> np.ndarray:
    """Δa replicates of y − x (one token stream, one seed; ``groups`` sequence blocks) as every comparison forms
    them (Trace.paired_boot, per layer): paired by block draws, and where both hold leave-one-out values (N ≤ 8·d)
    rescaled about Δa to κ times the paired exact jackknife's SE (analyze/contraction/calibration.py ``paired``)."""
    return calibration.paired(y.boot - x.boot, y.a - x.a, x.leave_one_out, y.leave_one_out, x.kappa, y.kappa, groups)
