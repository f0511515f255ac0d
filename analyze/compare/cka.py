"""Linear CKA per layer between two checkpoints on one token stream: streamed float64 cross-Gram XᵀY beside both
Grams, per sequence block, with a delete-one-block jackknife interval (docs/method.md §4, Kornblith et al. 2019).

``CKA(X, Y) = ‖S_xy‖²_F / (‖S_xx‖_F ‖S_yy‖_F)`` with the centered scatters ``S_xy = Σ_t (x_t − μ_x)(y_t − μ_y)ᵀ``:
the plain (biased) linear CKA, computed in feature space, so no N×N Gram is ever formed. It is invariant to an
orthogonal transform and an isotropic scale of either side, and 1 for a checkpoint against itself. Each block's
moments are centered on their own mean and merged with Chan's update, as the contraction's Gram is
(analyze/contraction/moments.py). It reads a seeded token subsample (``cka_tokens``; whole sequences stay in their
block, so the jackknife still deletes sequence blocks) and shares the reference's per-block moments across pairs.
Memory: 3 · pairs · blocks · d² float64 per task.
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


def grouped(block_ids: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The order that puts rows block by block (stable) and each block's bounds in it: block b is rows
    ``order[bounds[b]:bounds[b + 1]]``."""
    ids = np.asarray(block_ids)
    order = np.argsort(ids, kind="stable")
    return order, np.searchsorted(ids[order], np.arange(blocks + 1))


def side(x: np.ndarray, bounds: np.ndarray) -> list[tuple | None]:
    """Per block of the grouped rows ``x``: (count, mean, centered rows, scatter) in float64, None where empty;
    the reference's, computed once and shared by every pair."""
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            out.append(None)
            continue
        xb = np.asarray(x[lo:hi], dtype=np.float64)
        m = xb.mean(axis=0)
        c = xb - m
        out.append((int(hi - lo), m, c, c.T @ c))
    return out


def paired(ref: list[tuple | None], y: np.ndarray, bounds: np.ndarray) -> list[CrossStats | None]:
    """Each block's CrossStats of the reference's ``side`` against the grouped rows ``y``: two products per block."""
    out = []
    for r, lo, hi in zip(ref, bounds[:-1], bounds[1:]):
        if r is None:
            out.append(None)
            continue
        n, mx, xc, sxx = r
        yb = np.asarray(y[lo:hi], dtype=np.float64)
        my = yb.mean(axis=0)
        yc = yb - my
        out.append(CrossStats(n, mx, my, sxx, yc.T @ yc, xc.T @ yc))
    return out


class CrossGramAccumulator:
    """Per-block CrossStats, fed chunk by chunk with ``update(x, y, block_ids)``; whole sequences go to one block."""

    def __init__(self, dx: int, dy: int, blocks: int = 16):
        if blocks < 1:
            raise ValueError(f"need blocks ≥ 1, got {blocks}")
        self.blocks = [CrossStats.empty(dx, dy) for _ in range(blocks)]

    def update(self, x: np.ndarray, y: np.ndarray, block_ids: np.ndarray) -> CrossGramAccumulator:
        order, bounds = grouped(block_ids, len(self.blocks))
        return self.add(paired(side(np.asarray(x)[order], bounds), np.asarray(y)[order], bounds))

    def add(self, stats: list[CrossStats | None]) -> CrossGramAccumulator:
        """Merge one chunk's per-block stats (``paired``'s list, one entry per block)."""
        for b, st in enumerate(stats):
            if st is not None and st.n:
                self.blocks[b] = merge([self.blocks[b], st]) if self.blocks[b].n else st
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


def cka_layer(store_a: str, stores_b: list[str], layer: int, blocks: int, rows: np.ndarray | None = None) -> list[dict]:
    """One layer's linear CKA between the complete store ``store_a`` and each of ``stores_b`` (one token stream) over
    the flat token indices ``rows`` (sorted valid tokens: a seeded subsample; None: every valid token), read in
    ``spans`` of ``store_a``'s units (the same token range of the others), sequence s in block s mod ``blocks``. The
    reference is decoded once and its per-block moments shared by all pairs; one BLAS thread, as in the pool's
    workers (products of a unit's block rows are too small for threads to pay). One dict per other store."""
    from threadpoolctl import threadpool_limits

    a, others = Store.open(store_a), [Store.open(s) for s in stores_b]
    ia, ibs = a.layer_index(layer), [b.layer_index(layer) for b in others]
    seq = a.read("tokens/sequence")
    rows = np.flatnonzero(seq >= 0) if rows is None else np.asarray(rows)
    accs = [CrossGramAccumulator(int(a.meta["dim"]), int(b.meta["dim"]), blocks) for b in others]
    with threadpool_limits(1):
        for start, stop in spans(a.units, int(a.meta["dim"])):
            lo, hi = np.searchsorted(rows, [start, stop])
            if lo == hi:
                continue
            idx = rows[lo:hi]
            span, at = slice(int(idx[0]), int(idx[-1]) + 1), idx - idx[0]
            order, bounds = grouped(seq[idx] % blocks, blocks)
            ref = side(decode(np.asarray(a.hidden[ia, span, :]), a.dtype)[at[order]], bounds)
            for b, ib, acc in zip(others, ibs, accs):
                acc.add(paired(ref, decode(np.asarray(b.hidden[ib, span, :]), b.dtype)[at[order]], bounds))
    return [{"layer": layer, **jackknife(acc.blocks)} for acc in accs]


def spans(units, dim: int, mib: int = 256) -> list[tuple[int, int]]:
    """Token ranges [start, stop) of consecutive units, each at most ``mib`` MiB of one layer's float32 states (or one
    unit): few reads of the store (each a round of its event loop) at a bounded memory."""
    out: list[tuple[int, int]] = []
    for u in sorted(units, key=lambda u: u.token_start):
        if out and out[-1][1] == u.token_start and (u.token_stop - out[-1][0]) * dim * 4 <= mib * 2**20:
            out[-1] = (out[-1][0], u.token_stop)
        else:
            out.append((u.token_start, u.token_stop))
    return out


def cka_tasks(store_a: str, stores_b: list[str], layers: list[int], blocks: int, tokens: int = 0,
              seed: int = 0) -> list:
    """The checks (complete stores, identical token streams, every layer in all), then one task per layer over
    ``tokens`` valid tokens (a seeded subsample, the same for every layer and pair; 0: every valid token)."""
    from spinal.analyze.seeds import Purpose
    from spinal.analyze.transport.lens_pass import token_subsample

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
    sub = token_subsample(a, tokens, seed, purpose=Purpose.CKA_TOKENS)
    rows = np.flatnonzero(ta["sequence"] >= 0) if sub is None else sub
    return [(cka_layer, dict(store_a=store_a, stores_b=list(stores_b), layer=l, blocks=blocks, rows=rows))
            for l in layers]


def with_cka(comparison: Comparison, frames: dict[str, pd.DataFrame], tokens: int | None = None) -> Comparison:
    """Each pair's table with its CKA columns (keyed by the other checkpoint's label), the variant and the number of
    tokens read (``cka_tokens``) recorded."""
    pairs = []
    for p in comparison.pairs:
        f = frames.get(p.other)
        t = p.table if f is None else p.table.merge(f, on="layer", how="left")
        pairs.append(PairComparison(p.ref, p.other, t, p.summary))
    return replace(comparison, pairs=tuple(pairs), meta={**comparison.meta, "cka": VARIANT,
                                                           "cka_tokens": tokens})
