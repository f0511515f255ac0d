"""Streaming float64 second moments of one layer's hidden states, kept per sequence block (METHOD.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.linalg.blas import dsyrk


@dataclass(frozen=True)
class GramStats:
    """Token count, mean and centered scatter ``M = Σ_t (h_t − μ)(h_t − μ)ᵀ`` of a token set, in float64."""

    n: int
    mean: np.ndarray  # (dim,) float64
    scatter: np.ndarray  # (dim, dim) float64, centered

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        if self.mean.shape != (d,) or self.scatter.shape != (d, d):
            raise ValueError(f"mean {self.mean.shape} and scatter {self.scatter.shape} disagree on dim")
        if self.mean.dtype != np.float64 or self.scatter.dtype != np.float64:
            raise ValueError(f"GramStats holds float64 only, got {self.mean.dtype}/{self.scatter.dtype}")

    @classmethod
    def empty(cls, dim: int) -> GramStats:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def from_rows(cls, x: np.ndarray) -> GramStats:
        """Exact stats of the rows of ``x`` (token, dim), centered on their own mean before the product."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        xc = x - mean  # (token, dim)
        return cls(x.shape[0], mean, xc.T @ xc)  # float64 BLAS product, never TF32/bf16

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def merge(self, other: GramStats) -> GramStats:
        """Chan et al.'s pairwise update: ``M = M_a + M_b + (n_a n_b / n) δ δᵀ`` with ``δ = μ_b − μ_a``."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {self.dim} and {other.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        scatter = self.scatter + other.scatter + (self.n * other.n / n) * np.outer(delta, delta)
        return GramStats(n, self.mean + delta * (other.n / n), scatter)

    @property
    def raw_gram(self) -> np.ndarray:
        """Uncentered Gram ``Σ_t h_t h_tᵀ = M + n μ μᵀ`` (dim, dim)."""
        return self.scatter + self.n * np.outer(self.mean, self.mean)

    @property
    def column_mean_square(self) -> np.ndarray:
        """Mean of h² per coordinate (dim,): the per-column scale of storage rounding noise (METHOD.md §2)."""
        if self.n == 0:
            return np.zeros(self.dim)
        return np.diag(self.scatter) / self.n + self.mean**2

    @property
    def mean_square(self) -> float:
        """Mean of h² over all token × dim entries, uncentered (rounding error scales with |h|, not |h − μ|)."""
        return float(self.column_mean_square.mean())

    def eigenvalues(self, centered: bool = True) -> np.ndarray:
        """Non-zero spectrum of the scatter (centered) or raw Gram, descending, from float64 ``eigvalsh``."""
        rank = min(self.n - 1 if centered else self.n, self.dim)
        if rank <= 0:
            return np.zeros(0)
        gram = self.scatter if centered else self.raw_gram
        return _top_eigenvalues(gram, rank)


def _top_eigenvalues(gram: np.ndarray, rank: int) -> np.ndarray:
    """Largest ``rank`` eigenvalues of a symmetric PSD float64 matrix, descending, rounding negatives clipped to 0."""
    ev = np.linalg.eigvalsh(gram)[::-1][:rank]  # LAPACK float64 on CPU
    return np.clip(ev, 0.0, None)  # a PSD matrix's tiny negative eigenvalues are rounding


def merge_all(stats: tuple[GramStats, ...] | list[GramStats], dim: int) -> GramStats:
    """All groups at once: ``M = Σ M_b + Σ n_b (μ_b − μ)(μ_b − μ)ᵀ`` around the pooled mean μ.

    The k-group form of Chan's update (deviations from the pooled mean, no raw sums), one
    (d, d) product instead of k − 1 pairwise merges; equal to folding ``GramStats.merge``.
    A group listed w times (a bootstrap draw) is added once with weight w.
    """
    full = [s for s in stats if s.n]
    if not full:
        return GramStats.empty(dim)
    n_b = np.array([s.n for s in full], dtype=np.float64)  # (group,)
    means = np.stack([s.mean for s in full])  # (group, dim)
    n = n_b.sum()
    mean = n_b @ means / n  # (dim,)
    dev = means - mean  # (group, dim)
    scatter = (dev * n_b[:, None]).T @ dev  # (dim, dim) between-group term
    weight: dict[int, list] = {}
    for s in full:  # in place, never a (group, dim, dim) stack
        weight.setdefault(id(s.scatter), [s.scatter, 0])[1] += 1
    for m, w in weight.values():
        scatter += m if w == 1 else w * m
    return GramStats(int(n), mean, scatter)


def _symmetric_from_upper(m: np.ndarray, tile: int = 128, copy: bool = True) -> np.ndarray:
    """``m``'s upper triangle (diagonal included) mirrored to a full symmetric matrix, in a copy or in place.

    Copying one strip of columns at a time keeps the transposed reads in cache: about half the time
    of ``m + mᵀ`` at d = 1024.
    """
    out = np.array(m, dtype=np.float64, copy=True) if copy else m
    for i in range(0, m.shape[0], tile):
        out[i : i + tile, :i] = m[:i, i : i + tile].T
        diag = out[i : i + tile, i : i + tile]
        diag[np.tril_indices(diag.shape[0], -1)] = diag.T[np.tril_indices(diag.shape[0], -1)]
    return out


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


@dataclass(frozen=True)
class GramResult:
    """One layer's accumulated moments: per-block stats, or the raw rows themselves while tokens < dim.

    Exactly one of ``blocks`` and ``rows`` is set. Rows are kept while the token count is below
    ``dim`` because the d×d Gram would then have d − n pure-rounding eigenvalues and cost more
    memory than the rows (METHOD.md §2, "Rank").
    """

    dim: int
    n_blocks: int
    blocks: tuple[GramStats, ...] | None = None
    rows: np.ndarray | None = None  # (token, dim) float64
    row_blocks: np.ndarray | None = None  # (token,) block id of each row

    def __post_init__(self) -> None:
        if (self.blocks is None) == (self.rows is None):
            raise ValueError("GramResult needs exactly one of blocks and rows")
        if self.rows is not None and (self.row_blocks is None or self.row_blocks.shape != self.rows.shape[:1]):
            raise ValueError("rows need one block id each")

    @cached_property
    def total(self) -> GramStats:
        """Stats of all tokens (merged blocks, or computed from the kept rows)."""
        if self.rows is not None:
            return GramStats.from_rows(self.rows)
        return merge_all(self.blocks, self.dim)

    @property
    def n(self) -> int:
        return self.rows.shape[0] if self.rows is not None else sum(b.n for b in self.blocks)

    @property
    def block_sizes(self) -> np.ndarray:
        """Tokens per block (n_blocks,)."""
        if self.rows is not None:
            return np.bincount(self.row_blocks, minlength=self.n_blocks)
        return np.array([b.n for b in self.blocks], dtype=np.int64)

    @property
    def column_mean_square(self) -> np.ndarray:
        if self.rows is not None:
            return (self.rows**2).mean(axis=0) if self.n else np.zeros(self.dim)
        return self.total.column_mean_square

    @property
    def mean_square(self) -> float:
        return float(self.column_mean_square.mean())

    def eigenvalues(self, centered: bool = True) -> np.ndarray:
        """Non-zero spectrum descending: via the n×n Gram when rows are kept, else the d×d scatter.

        At most ``min(n − 1, d)`` values when centered, ``min(n, d)`` raw.
        """
        if self.rows is None:
            return self.total.eigenvalues(centered)
        rank = min(self.n - 1 if centered else self.n, self.dim)
        if rank <= 0:
            return np.zeros(0)
        x = self.rows - self.rows.mean(axis=0) if centered else self.rows  # (token, dim)
        return _top_eigenvalues(x @ x.T, rank)  # (token, token): same non-zero spectrum as xᵀx


class GramAccumulator:
    """Accumulates float64 per-block moments chunk by chunk: ``update(x, block_ids)``, ``merge``, ``result``.

    Each block's rows are queued (upcast to float64), then centered on their own mean and
    Chan-merged into the block, never ``G − s sᵀ/N`` (METHOD.md §2, "Precision"). Callers assign
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

    def merge(self, other: GramAccumulator) -> GramAccumulator:
        """Fold another accumulator of the same dim and block count into this one (Ray fan-in)."""
        if self._spent or other._spent:
            raise ValueError("cannot merge a finished accumulator; its result was handed over")
        if (other.dim, other.n_blocks) != (self.dim, self.n_blocks):
            raise ValueError(
                f"cannot merge accumulators with (dim, blocks) = {(self.dim, self.n_blocks)} "
                f"and {(other.dim, other.n_blocks)}"
            )
        if other.keeps_rows:
            for rows, ids in zip(other._rows, other._row_blocks):
                self.update(rows, ids)
            return self
        other._flush_all()
        self._flush_all()
        if self.keeps_rows:
            self._start_scatter()
        for b in range(self.n_blocks):
            n_a, n_b = int(self._count[b]), int(other._count[b])
            if n_b == 0:
                continue
            n = n_a + n_b
            delta = other._mean[b] - self._mean[b]  # (dim,)
            self._scatter[b] += other._scatter[b]  # both upper-triangular
            if n_a:
                self._syrk_into(b, np.sqrt(n_a * n_b / n) * delta[None, :])  # + (n_a n_b / n) δ δᵀ
            self._mean[b] += delta * (n_b / n)
            self._count[b] = n
        self.n += other.n
        return self

    def result(self) -> GramResult:
        """Frozen copy of the current state (the accumulator stays usable)."""
        return self._result(copy=True)

    def finish(self) -> GramResult:
        """The result without copying the block scatters (half the peak memory); the accumulator is spent."""
        res = self._result(copy=False)
        self._scatter = self._mean = self._count = self._queue = None
        self._rows, self._row_blocks, self._spent = [], [], True
        return res

    def _result(self, copy: bool) -> GramResult:
        if self._spent:
            raise ValueError("this accumulator was finished; its result was handed over")
        self._flush_all()
        if self.keeps_rows:
            rows = np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim))
            ids = np.concatenate(self._row_blocks) if self._row_blocks else np.zeros(0, dtype=np.int64)
            return GramResult(self.dim, self.n_blocks, rows=rows, row_blocks=ids)
        blocks = tuple(
            GramStats(int(self._count[b]), self._mean[b].copy(), _symmetric_from_upper(self._scatter[b], copy=copy))
            for b in range(self.n_blocks)
        )
        return GramResult(self.dim, self.n_blocks, blocks=blocks)

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
        """Center block b's queued rows on their own mean (per chunk, METHOD.md §2) and Chan-merge them.

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


def draw_blocks(result: GramResult, rng: np.random.Generator) -> np.ndarray:
    """Block ids for one bootstrap resample: as many draws, with replacement, as there are non-empty blocks.

    Empty blocks (fewer sequences than blocks) are never drawn. Drawing ids once and passing
    them to ``resample`` for two checkpoints gives the paired bootstrap of METHOD.md §4.
    """
    filled = np.flatnonzero(result.block_sizes > 0)
    if filled.size < 2:
        raise ValueError(f"the block bootstrap needs ≥ 2 non-empty blocks, got {filled.size}")
    return filled[rng.integers(0, filled.size, size=filled.size)]


def resample(result: GramResult, choice: np.ndarray) -> GramResult:
    """The moments of the blocks listed in ``choice`` (repeats allowed), merged as one token set."""
    choice = np.asarray(choice, dtype=np.int64)
    if choice.size == 0 or choice.min() < 0 or choice.max() >= result.n_blocks:
        raise ValueError(f"block choice must be non-empty ids in [0, {result.n_blocks}), got {choice}")
    if result.blocks is not None:
        return GramResult(result.dim, choice.size, blocks=tuple(result.blocks[b] for b in choice))
    parts = [result.rows[result.row_blocks == b] for b in choice]  # each (token, dim)
    ids = np.concatenate([np.full(p.shape[0], j, dtype=np.int64) for j, p in enumerate(parts)])
    return GramResult(result.dim, choice.size, rows=np.concatenate(parts), row_blocks=ids)


def bootstrap_eigenvalues(result: GramResult, rng: np.random.Generator, centered: bool = True) -> np.ndarray:
    """Eigenvalues of one block-bootstrap resample (METHOD.md §2, "Uncertainty")."""
    return resample(result, draw_blocks(result, rng)).eigenvalues(centered)
