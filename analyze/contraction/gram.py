"""Streaming float64 second moments of one layer's hidden states, kept per sequence block (docs/method.md §2)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg.blas import dsyrk

from spinal.analyze.contraction.moments import GramResult, GramStats


def _as_float(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (token, dim) chunk as float32 or float64 numpy (bf16/fp16 widen exactly to float32); no float64 copy yet."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return (x if x.dtype == torch.float64 else x.to(torch.float32)).numpy()
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _count_non_finite(x: np.ndarray) -> int:
    """Number of NaN/inf entries; a float64 sum of float32 data cannot overflow, so one cheap pass decides."""
    if np.isfinite(x.sum(dtype=np.float64)):
        return 0
    return int((~np.isfinite(x)).sum())  # also 0 when only a float64 sum overflowed


class GramAccumulator:
    """Accumulates float64 per-block moments chunk by chunk with ``update(x, block_ids)``; ``finish()`` hands them over.

    Each block's rows are queued (upcast to float64), then centered on their own mean and
    Chan-merged into the block, never ``G − s sᵀ/N`` (docs/method.md §2, "Precision"). Callers assign
    whole sequences to blocks so the block bootstrap resamples sequences.
    """

    def __init__(self, dim: int, blocks: int = 16, *, flush_rows: int | None = None):
        if dim < 1 or blocks < 1:
            raise ValueError(f"need dim ≥ 1 and blocks ≥ 1, got dim={dim}, blocks={blocks}")
        self.dim = dim
        self.n_blocks = blocks
        self.n = 0
        # Kept-rows mode (n < dim): float64 chunks and their block ids.
        self._rows: list[np.ndarray] = []
        self._row_blocks: list[np.ndarray] = []
        # Scatter mode (n ≥ dim): per-block count, mean and the upper triangle of the centered
        # scatter (the strictly lower triangle stays 0), updated in place.
        self._count: np.ndarray | None = None  # (block,)
        self._mean: np.ndarray | None = None  # (block, dim)
        self._scatter: np.ndarray | None = None  # (block, dim, dim)
        # Rows wait per block until a SYRK is worth it. At d = 1024 on 2 cores, 256-row SYRKs already
        # run at the rate of one 32k-row SYRK, so 256…512 rows per block (≤ 256 MiB of float64 in
        # all). One spare row per block carries Chan's mean-shift term into the same SYRK.
        self._flush_rows = flush_rows or int(min(512, max(256, (256 << 20) // (8 * dim * blocks))))
        self._queue: np.ndarray | None = None  # (block, flush_rows + 1, dim) float64, pages touched as filled
        self._fill = np.zeros(blocks, dtype=np.int64)
        self._spent = False

    @property
    def keeps_rows(self) -> bool:
        return self._scatter is None

    def update(self, x: np.ndarray | torch.Tensor, block_ids: np.ndarray) -> GramAccumulator:
        """Add a chunk ``x`` (token, dim) whose tokens belong to blocks ``block_ids`` (token,) in [0, blocks)."""
        if self._spent:
            raise ValueError("this accumulator was finished; start a new one")
        x = _as_float(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a (token, {self.dim}) chunk, got shape {x.shape}")
        ids = self._check_ids(block_ids, x.shape[0])
        if bad := _count_non_finite(x):
            raise ValueError(f"chunk has {bad} non-finite entries")
        if x.shape[0] == 0:
            return self
        if self.keeps_rows and self.n + x.shape[0] < self.dim:
            self._rows.append(np.array(x, dtype=np.float64, copy=True))
            self._row_blocks.append(ids)
            self.n += x.shape[0]
            return self
        if self.keeps_rows:
            self._start_scatter()
        self._absorb(x, ids)
        return self

    def finish(self) -> GramResult:
        """The frozen result, built on the block scatters themselves (no copy); the accumulator is spent."""
        if self._spent:
            raise ValueError("this accumulator was finished; its result was handed over")
        self._flush_all()
        if self.keeps_rows:
            rows = np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim))
            ids = np.concatenate(self._row_blocks) if self._row_blocks else np.zeros(0, dtype=np.int64)
            res = GramResult(self.dim, self.n_blocks, rows=rows, row_blocks=ids)
        else:
            lower = np.tri(self.dim, k=-1, dtype=bool)  # strictly below the diagonal
            blocks = []
            for b in range(self.n_blocks):
                m = self._scatter[b]
                m[lower] = m.T[lower]  # the SYRK filled the upper triangle: mirror it, an exact copy
                blocks.append(GramStats(int(self._count[b]), self._mean[b].copy(), m))
            res = GramResult(self.dim, self.n_blocks, blocks=tuple(blocks))
        self._scatter = self._mean = self._count = self._queue = None
        self._rows, self._row_blocks, self._spent = [], [], True
        return res

    def _check_ids(self, block_ids: np.ndarray, n_tokens: int) -> np.ndarray:
        ids = np.asarray(block_ids)
        if ids.shape != (n_tokens,) or (n_tokens and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"block_ids must be {n_tokens} integers, got shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if n_tokens and (ids.min() < 0 or ids.max() >= self.n_blocks):
            raise ValueError(f"block ids span [{ids.min()}, {ids.max()}], outside [0, {self.n_blocks})")
        return ids

    def _start_scatter(self) -> None:
        """Switch from kept rows to per-block scatter (memory d×d per block from here on)."""
        rows, ids = self._rows, self._row_blocks
        self._rows, self._row_blocks = [], []
        self._count = np.zeros(self.n_blocks, dtype=np.int64)
        self._mean = np.zeros((self.n_blocks, self.dim))
        self._scatter = np.zeros((self.n_blocks, self.dim, self.dim))
        self._queue = np.empty((self.n_blocks, self._flush_rows + 1, self.dim))
        self.n = 0
        for x, b in zip(rows, ids):
            self._absorb(x, b)

    def _absorb(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Copy each run of equal block ids into that block's queue; a full queue is merged at once."""
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        if cuts.size > max(4 * self.n_blocks, x.shape[0] // 32):  # ids interleaved: group them first
            order = np.argsort(ids, kind="stable")
            x, ids = x[order], ids[order]
            cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, ids.size]):
            b, lo = int(ids[lo]), int(lo)
            while lo < hi:
                f = int(self._fill[b])
                take = min(int(hi) - lo, self._flush_rows - f)
                self._queue[b, f : f + take] = x[lo : lo + take]  # the float64 upcast happens in this copy
                self._fill[b] += take
                lo += take
                if self._fill[b] == self._flush_rows:
                    self._flush(b)
        self.n += x.shape[0]

    def _flush(self, b: int) -> None:
        """Center block b's queued rows on their own mean (per chunk, docs/method.md §2) and Chan-merge them.

        ``M ← M + Σ (x − m)(x − m)ᵀ + (n_a k / n) δ δᵀ`` is one SYRK over the centered rows plus one
        extra row ``√(n_a k / n) δ``, with δ = m − μ_a.
        """
        k = int(self._fill[b])
        if not k:
            return
        rows = self._queue[b]
        mean = rows[:k].mean(axis=0)
        rows[:k] -= mean  # centered per chunk, in place
        n_a = int(self._count[b])
        n = n_a + k
        delta = mean - self._mean[b]
        if n_a:
            np.multiply(delta, np.sqrt(n_a * k / n), out=rows[k])
        self._syrk_into(b, rows[: k + 1 if n_a else k])
        self._mean[b] += delta * (k / n)
        self._count[b] = n
        self._fill[b] = 0

    def _syrk_into(self, b: int, rows: np.ndarray) -> None:
        """Upper triangle of block b's scatter += rowsᵀ rows, in float64 BLAS (half a GEMM's flops)."""
        # In Fortran order the C-contiguous (dim, dim) scatter is its transpose: C's upper triangle
        # is Fortran's lower one. rows.T is the Fortran view of the C-contiguous (token, dim) rows.
        target = self._scatter[b].T
        out = dsyrk(1.0, rows.T, beta=1.0, c=target, trans=0, lower=1, overwrite_c=1)
        if not np.shares_memory(out, target):  # f2py had to copy: write the sum back
            target[...] = out

    def _flush_all(self) -> None:
        if self._scatter is not None:
            for b in range(self.n_blocks):
                self._flush(b)
