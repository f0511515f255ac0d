"""Linear CKA per layer between two checkpoints on one token stream: streamed float64 cross-Gram XᵀY beside both
Grams, per sequence block, with a delete-one-block jackknife interval (docs/method.md §4, Kornblith et al. 2019).

``CKA(X, Y) = ‖S_xy‖²_F / (‖S_xx‖_F ‖S_yy‖_F)`` with the centered scatters ``S_xy = Σ_t (x_t − μ_x)(y_t − μ_y)ᵀ``:
the plain (biased) linear CKA, computed in feature space, so no N×N Gram is ever formed. It is invariant to an
orthogonal transform and an isotropic scale of either side, and 1 for a checkpoint against itself. Each block's
moments are centered on their own mean and merged with Chan's update, as the contraction's Gram is
(analyze/contraction/moments.py). Memory: 3 · blocks · d² float64 per task (1.5 GiB at d = 2048, 16 blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from spinal.analyze.compare.comparison import Comparison, PairComparison
from spinal.analyze.contraction.calibration import spread
from spinal.errors import InputError
from spinal.store.contract import Store, decode

VARIANT = ("linear CKA, plain (biased) estimator on sequence-block-merged float64 centered moments: "
           "‖S_xy‖²_F / (‖S_xx‖_F ‖S_yy‖_F) (Kornblith et al. 2019); cka_lo/cka_hi: cka ± t(g−1)·SE of the "
           "delete-one-block jackknife over g sequence blocks, clipped to [0, 1]")


@dataclass(frozen=True)
class CrossStats:
    """Count, means and the centered scatters of paired rows (x_t, y_t) of one token set, in float64."""

    n: int
    mean_x: np.ndarray  # (dx,)
    mean_y: np.ndarray  # (dy,)
    sxx: np.ndarray  # (dx, dx)
    syy: np.ndarray  # (dy, dy)
    sxy: np.ndarray  # (dx, dy)

    @classmethod
    def empty(cls, dx: int, dy: int) -> CrossStats:
        return cls(0, np.zeros(dx), np.zeros(dy), np.zeros((dx, dx)), np.zeros((dy, dy)), np.zeros((dx, dy)))

    @classmethod
    def from_rows(cls, x: np.ndarray, y: np.ndarray) -> CrossStats:
        """Exact moments of paired rows ``x`` (token, dx) and ``y`` (token, dy), each centered on its own mean."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"paired rows differ in count: {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] == 0:
            return cls.empty(x.shape[1], y.shape[1])
        mx, my = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mx, y - my
        return cls(x.shape[0], mx, my, xc.T @ xc, yc.T @ yc, xc.T @ yc)


def merge(stats: list[CrossStats]) -> CrossStats:
    """All groups at once around the pooled means: ``S = Σ S_b + Σ n_b (μ_b − μ)(ν_b − ν)ᵀ`` for each pair of sides."""
    full = [s for s in stats if s.n]
    if not full:
        return stats[0] if stats else CrossStats.empty(0, 0)
    n_b = np.array([s.n for s in full], dtype=np.float64)
    mx, my = np.stack([s.mean_x for s in full]), np.stack([s.mean_y for s in full])
    n = n_b.sum()
    mean_x, mean_y = n_b @ mx / n, n_b @ my / n
    dx, dy = mx - mean_x, my - mean_y
    wx = dx * n_b[:, None]
    sxx, syy, sxy = wx.T @ dx, (dy * n_b[:, None]).T @ dy, wx.T @ dy
    for s in full:
        sxx += s.sxx
        syy += s.syy
        sxy += s.sxy
    return CrossStats(int(n), mean_x, mean_y, sxx, syy, sxy)


def linear_cka(s: CrossStats) -> float:
    """``‖S_xy‖²_F / (‖S_xx‖_F ‖S_yy‖_F)``; NaN where either side does not vary."""
    den = float(np.linalg.norm(s.sxx) * np.linalg.norm(s.syy))
    return float(np.sum(s.sxy**2)) / den if den > 0 else math.nan


class CrossGramAccumulator:
    """Per-block CrossStats, fed chunk by chunk with ``update(x, y, block_ids)``; whole sequences go to one block."""

    def __init__(self, dx: int, dy: int, blocks: int = 16):
        if blocks < 1:
            raise ValueError(f"need blocks ≥ 1, got {blocks}")
        self.blocks = [CrossStats.empty(dx, dy) for _ in range(blocks)]

    def update(self, x: np.ndarray, y: np.ndarray, block_ids: np.ndarray) -> CrossGramAccumulator:
        ids = np.asarray(block_ids)
        for b in np.unique(ids):
            m = ids == b
            self.blocks[int(b)] = merge([self.blocks[int(b)], CrossStats.from_rows(x[m], y[m])])
        return self


def jackknife(blocks: list[CrossStats], level: float = 0.95) -> dict:
    """CKA of all blocks, its delete-one-block jackknife SE over the filled blocks, and the t interval (g − 1
    degrees of freedom) clipped to [0, 1]; SE and interval NaN with fewer than 2 filled blocks."""
    from scipy.stats import t

    filled = [b for b in blocks if b.n]
    point = linear_cka(merge(filled)) if filled else math.nan
    left = np.array([linear_cka(merge(filled[:i] + filled[i + 1:])) for i in range(len(filled))]
                    if len(filled) >= 2 else [])
    se = spread(left)
    half = float(t.ppf(0.5 + level / 2, len(filled) - 1)) * se if len(filled) >= 2 else math.nan
    lo, hi = (max(0.0, point - half), min(1.0, point + half)) if math.isfinite(half) else (math.nan, math.nan)
    return {"cka": point, "cka_lo": lo, "cka_hi": hi, "cka_se": se, "cka_blocks": len(filled)}


def cka_layer(store_a: str, stores_b: list[str], layer: int, blocks: int) -> list[dict]:
    """One layer's linear CKA between the complete store ``store_a`` and each of ``stores_b`` (one token stream):
    every valid token, read unit by unit of ``store_a``'s layout (the same flat token range of the others, so the
    reference is decoded once for all of them), sequence s in block s mod ``blocks``. One dict per other store."""
    a, others = Store.open(store_a), [Store.open(s) for s in stores_b]
    ia, ibs = a.layer_index(layer), [b.layer_index(layer) for b in others]
    seq = a.read("tokens/sequence")
    accs = [CrossGramAccumulator(int(a.meta["dim"]), int(b.meta["dim"]), blocks) for b in others]
    for u in a.units:
        sl = slice(u.token_start, u.token_stop)
        valid = seq[sl] >= 0
        if not valid.any():
            continue
        x = decode(np.asarray(a.hidden[ia, sl, :]), a.dtype)[valid].astype(np.float64)
        ids = seq[sl][valid] % blocks
        for b, ib, acc in zip(others, ibs, accs):
            acc.update(x, decode(np.asarray(b.hidden[ib, sl, :]), b.dtype)[valid], ids)
    return [{"layer": layer, **jackknife(acc.blocks)} for acc in accs]


def cka_tasks(store_a: str, stores_b: list[str], layers: list[int], blocks: int) -> list:
    """The checks (complete stores, identical token streams, every layer in all), then one task per layer."""
    a = Store.open(store_a)
    ta = a.tokens()
    for store_b in stores_b:
        b = Store.open(store_b)
        if not (a.complete and b.complete):
            raise InputError(f"CKA needs complete stores ({store_a}, {store_b}); finish them with "
                             "`spinal capture … --resume`")
        tb = b.tokens()
        if not all(np.array_equal(ta[k], tb[k]) for k in ta):
            raise InputError(f"{store_a} and {store_b} hold different token streams; CKA pairs identical tokens")
        missing = [l for l in layers if l not in a.layers or l not in b.layers]
        if missing:
            raise InputError(f"layers {missing} are not in both {store_a} and {store_b}; CKA pairs the traces' "
                             "layers")
    return [(cka_layer, dict(store_a=store_a, stores_b=list(stores_b), layer=l, blocks=blocks)) for l in layers]


def with_cka(comparison: Comparison, frames: dict[str, pd.DataFrame]) -> Comparison:
    """Each pair's table with its CKA columns (keyed by the other checkpoint's label), and the variant recorded."""
    pairs = []
    for p in comparison.pairs:
        f = frames.get(p.other)
        t = p.table if f is None else p.table.merge(f, on="layer", how="left")
        pairs.append(PairComparison(p.ref, p.other, t, p.summary))
    return replace(comparison, pairs=tuple(pairs), meta={**comparison.meta, "cka": VARIANT})
