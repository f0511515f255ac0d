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
    """
    full = [s for s in stats if s.n]
    if not full:
        return GramStats.empty(dim)
    n_b = np.array([s.n for s in full], dtype=np.float64)  # (group,)
    means = np.stack([s.mean for s in full])  # (group, dim)
    n = n_b.sum()
    mean = n_b @ means / n  # (dim,)
    dev = means - mean  # (group, dim)
    scatter = np.sum([s.scatter for s in full], axis=0) + (dev * n_b[:, None]).T @ dev  # (dim, dim)
    return GramStats(int(n), mean, scatter)


def _symmetric_from_upper(m: np.ndarray) -> np.ndarray:
    """A full symmetric copy of ``m`` built from its upper triangle (diagonal included)."""
    out = np.triu(m)
    out += np.triu(m, 1).T
    return out


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Upcast a (token, dim) chunk of any float dtype (bf16 included) to float64 numpy for the Gram product."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


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

    Each chunk is upcast to float64, centered on its own mean and Chan-merged into its block,
    never ``G − s sᵀ/N`` (METHOD.md §2, "Precision"). Callers assign whole sequences to blocks
    so the block bootstrap resamples sequences.
    """

    def __init__(self, dim: int, blocks: int = 16):
        if dim < 1 or blocks < 1:
            raise ValueError(f"need dim ≥ 1 and blocks ≥ 1, got dim={dim}, blocks={blocks}")
        self.dim = dim
        self.n_blocks = blocks
        self.n = 0
        # Kept-rows mode (n < dim): float64 chunks and their block ids.
        self._rows: list[np.ndarray] = []
        self._row_blocks: list[np.ndarray] = []
        # Scatter mode (n ≥ dim): per-block count, mean and centered scatter, updated in place.
        self._count: np.ndarray | None = None  # (block,)
        self._mean: np.ndarray | None = None  # (block, dim)
        self._scatter: np.ndarray | None = None  # (block, dim, dim)
        self._buf: np.ndarray | None = None  # (dim, dim) scratch for products
        # Rows wait per block until a SYRK is worth it (a few hundred rows make it slow): at most
        # ~256 MiB of float64 pending in all, 256…8192 rows per block.
        self._flush_rows = int(min(8192, max(256, (256 << 20) // (8 * dim * blocks))))
        self._pending: list[list[np.ndarray]] = [[] for _ in range(blocks)]
        self._pending_n = np.zeros(blocks, dtype=np.int64)

    @property
    def keeps_rows(self) -> bool:
        return self._scatter is None

    def update(self, x: np.ndarray | torch.Tensor, block_ids: np.ndarray) -> GramAccumulator:
        """Add a chunk ``x`` (token, dim) whose tokens belong to blocks ``block_ids`` (token,) in [0, blocks)."""
        x = _as_float64(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a (token, {self.dim}) chunk, got shape {x.shape}")
        ids = self._check_ids(block_ids, x.shape[0])
        if not np.isfinite(x).all():
            raise ValueError(f"chunk has {int((~np.isfinite(x)).sum())} non-finite entries")
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
            self._chan_add(b, int(other._count[b]), other._mean[b], other._scatter[b])
        self.n += other.n
        return self

    def result(self) -> GramResult:
        """Frozen copy of the current state (the accumulator stays usable)."""
        self._flush_all()
        if self.keeps_rows:
            rows = np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim))
            ids = np.concatenate(self._row_blocks) if self._row_blocks else np.zeros(0, dtype=np.int64)
            return GramResult(self.dim, self.n_blocks, rows=rows, row_blocks=ids)
        blocks = tuple(
            GramStats(int(self._count[b]), self._mean[b].copy(), _symmetric_from_upper(self._scatter[b]))
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
        self._buf = np.empty((self.dim, self.dim))
        self.n = 0
        for x, b in zip(rows, ids):
            self._absorb(x, b)

    def _absorb(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Queue each block's share of the chunk; a block's queue is centered and merged once it is long enough."""
        order = np.argsort(ids, kind="stable")
        xs, bs = x[order], ids[order]  # (token, dim) grouped by block
        bounds = np.searchsorted(bs, np.arange(self.n_blocks + 1))
        for b in range(self.n_blocks):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            if hi > lo:
                self._pending[b].append(xs[lo:hi])
                self._pending_n[b] += hi - lo
                if self._pending_n[b] >= self._flush_rows:
                    self._flush(b)
        self.n += x.shape[0]

    def _flush(self, b: int) -> None:
        """Center block b's queued rows on their own mean (per chunk, METHOD.md §2) and Chan-merge them."""
        if not self._pending_n[b]:
            return
        part = np.concatenate(self._pending[b]) if len(self._pending[b]) > 1 else self._pending[b][0]
        self._pending[b], self._pending_n[b] = [], 0
        mean = part.mean(axis=0)
        xc = part - mean  # (token, dim), centered per chunk
        # float64 SYRK: only the upper triangle of xcᵀxc, half a GEMM's flops. The lower triangle of
        # the per-block scatter is never read; result() mirrors the upper one.
        upper = dsyrk(1.0, xc.T, trans=0, lower=0)  # (dim, dim): xc.T is the Fortran view of xc
        self._chan_add(b, part.shape[0], mean, upper)

    def _flush_all(self) -> None:
        if self._scatter is not None:
            for b in range(self.n_blocks):
                self._flush(b)

    def _chan_add(self, b: int, n_b: int, mean_b: np.ndarray, scatter_b: np.ndarray) -> None:
        """In-place ``M_a ← M_a + M_b + (n_a n_b / n) δ δᵀ``, ``μ_a ← μ_a + δ n_b / n`` for block b."""
        n_a = int(self._count[b])
        if n_b == 0:
            return
        n = n_a + n_b
        delta = mean_b - self._mean[b]  # (dim,)
        self._scatter[b] += scatter_b  # scatter_b may be self._buf, which is free again after this line
        if n_a:
            outer = np.outer(delta, delta, out=self._buf)  # (dim, dim)
            outer *= n_a * n_b / n
            self._scatter[b] += outer
        self._mean[b] += delta * (n_b / n)
        self._count[b] = n


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
