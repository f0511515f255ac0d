"""One layer's contraction: a streaming float64 Gram pass over the store, both fits, bootstrap replicates, split-half null."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinal.analyze.gram import GramAccumulator
from spinal.analyze.moments import GramResult, draw_blocks, resample
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


def seeded_rng(seed: int, purpose: int) -> np.random.Generator:
    """The same draws for every layer and every checkpoint: replicate b of A pairs with replicate b of B."""
    return np.random.default_rng([seed, purpose])


def accumulate(store: Store, layer: int, blocks: int) -> GramResult:
    """One streaming pass over a layer's done units; sequence s feeds block s mod ``blocks``."""
    acc = GramAccumulator(int(store.meta["dim"]), blocks=blocks)
    for h, seq in store.iter_layer(layer):  # h: (token, dim) float32 decoded
        acc.update(h, seq % blocks)
    return acc.finish()


def layer_spectrum(store_path: str, layer: int, *, blocks: int, n_boot: int, null_splits: int, seed: int,
                   window: tuple[int, int] | None) -> LayerSpectrum:
    store = Store.open(store_path)
    res = accumulate(store, layer, blocks)
    kw = dict(storage_dtype=store.dtype, window=window)
    centered = fit_gram(res, centered=True, **kw)
    raw = fit_gram(res, centered=False, **kw)
    nonempty = np.flatnonzero(res.block_sizes > 0)
    rng = seeded_rng(seed, 1)
    boot = np.array([fit_gram(resample(res, draw_blocks(res, rng)), centered=True, with_mle=False, **kw).a_wls
                     for _ in range(n_boot if nonempty.size >= 2 else 0)], dtype=np.float64)
    null = []
    split_rng = seeded_rng(seed, 2)
    for _ in range(null_splits if nonempty.size >= 2 else 0):
        perm = split_rng.permutation(nonempty)
        half = perm.size // 2
        a1 = fit_gram(resample(res, perm[:half]), centered=True, with_mle=False, **kw).a_wls
        a2 = fit_gram(resample(res, perm[half:]), centered=True, with_mle=False, **kw).a_wls
        null.append(a1 - a2)
    return LayerSpectrum(layer, res.n, centered, raw, boot, np.array(null, dtype=np.float64),
                         singular_values(res.eigenvalues(True)))

