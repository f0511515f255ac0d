"""One layer's contraction: a streaming float64 Gram pass over the store, both fits, bootstrap replicates, split-half null."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spinal.analyze.gram import GramAccumulator
from spinal.analyze.moments import GramResult, draw_blocks, resample
from spinal.analyze.seeds import Purpose, rng
from spinal.analyze.spectrum import SpectrumFit, fit_gram, singular_values
from spinal.store import Store


@dataclass(frozen=True)
class LayerSpectrum:
    layer: int
    n_tokens: int
    centered: SpectrumFit
    raw: SpectrumFit
    boot: np.ndarray  # (n_boot,) a_wls of block-bootstrap resamples, centered
    null_diffs: np.ndarray  # (null_splits,) a(half 1) − a(half 2)
    sv: np.ndarray  # centered singular values, descending (for plots)
    curv_boot: np.ndarray  # (n_boot,) curvature of the same resamples


def accumulate(store: Store, layer: int, blocks: int) -> GramResult:
    """One streaming pass over a layer's done units; sequence s feeds block s mod ``blocks``."""
    acc = GramAccumulator(int(store.meta["dim"]), blocks=blocks)
    for h, seq in store.iter_layer(layer):  # h: (token, dim) float32 decoded
        acc.update(h, seq % blocks)
    return acc.finish()


def _replicate(res: GramResult, storage_dtype: Any, window: tuple[int, int] | None) -> tuple[float, float]:
    """Centered (a_wls, curvature) of a resample under the point estimate's window rule; no MLE (not kept)."""
    fit = fit_gram(res, storage_dtype=storage_dtype, centered=True, window=window, with_mle=False)
    return fit.a_wls, fit.curvature


def bootstrap_a(res: GramResult, rng: np.random.Generator, n_boot: int, *, storage_dtype: Any,
                window: tuple[int, int] | None) -> np.ndarray:
    """(a, curvature) of ``n_boot`` block-bootstrap resamples, (n_boot, 2), METHOD.md §2 "Uncertainty"; none
    with < 2 filled blocks. One eigensolve per replicate gives both."""
    if np.count_nonzero(res.block_sizes) < 2:
        return np.zeros((0, 2))
    return np.array([_replicate(resample(res, draw_blocks(res, rng)), storage_dtype, window)
                     for _ in range(n_boot)], dtype=np.float64).reshape(n_boot, 2)


def split_half_null(res: GramResult, rng: np.random.Generator, splits: int, *, storage_dtype: Any,
                    window: tuple[int, int] | None) -> np.ndarray:
    """a(half 1) − a(half 2) over ``splits`` random halvings of the filled blocks (splits,): METHOD.md §4's null spread."""
    nonempty = np.flatnonzero(res.block_sizes > 0)
    if nonempty.size < 2:
        return np.zeros(0)
    diffs = []
    for _ in range(splits):
        perm = rng.permutation(nonempty)
        half = perm.size // 2
        diffs.append(_replicate(resample(res, perm[:half]), storage_dtype, window)[0]
                     - _replicate(resample(res, perm[half:]), storage_dtype, window)[0])
    return np.array(diffs, dtype=np.float64)


def layer_spectrum(store_path: str, layer: int, *, blocks: int, n_boot: int, null_splits: int, seed: int,
                   window: tuple[int, int] | None) -> LayerSpectrum:
    store = Store.open(store_path)
    res = accumulate(store, layer, blocks)
    kw = dict(storage_dtype=store.dtype, window=window)
    centered = fit_gram(res, centered=True, **kw)
    raw = fit_gram(res, centered=False, **kw)
    boot = bootstrap_a(res, rng(seed, Purpose.BOOTSTRAP), n_boot, **kw)
    null = split_half_null(res, rng(seed, Purpose.NULL_SPLITS), null_splits, **kw)
    return LayerSpectrum(layer, res.n, centered, raw, boot[:, 0].copy(), null, singular_values(res.eigenvalues(True)),
                         boot[:, 1].copy())
