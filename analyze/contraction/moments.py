"""A layer's accumulated float64 moments per sequence block, as the spectrum and bootstrap read them (docs/method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


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

    @property
    def raw_gram(self) -> np.ndarray:
        """Uncentered Gram ``Σ_t h_t h_tᵀ = M + n μ μᵀ`` (dim, dim)."""
        return self.scatter + self.n * np.outer(self.mean, self.mean)

    @property
    def column_mean_square(self) -> np.ndarray:
        """Mean of h² per coordinate (dim,): the per-column scale of storage rounding noise (docs/method.md §2)."""
        if self.n == 0:
            return np.zeros(self.dim)
        return np.diag(self.scatter) / self.n + self.mean**2

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

    The k-group form of Chan et al.'s pairwise update (deviations from the pooled mean, no raw
    sums), one (d, d) product instead of k − 1 pairwise merges. A group listed w times (a
    bootstrap draw) is added once with weight w.
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


@dataclass(frozen=True)
class GramResult:
    """One layer's accumulated moments: per-block stats, or the raw rows themselves while tokens < dim.

    Exactly one of ``blocks`` and ``rows`` is set. Rows are kept while the token count is below
    ``dim`` because the d×d Gram would then have d − n pure-rounding eigenvalues and cost more
    memory than the rows (docs/method.md §2, "Rank").
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
        """Mean of h² per coordinate (dim,), from the kept rows or the merged stats."""
        if self.rows is not None:
            return (self.rows**2).mean(axis=0) if self.n else np.zeros(self.dim)
        return self.total.column_mean_square

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


def draw_blocks(result: GramResult, rng: np.random.Generator, filled: np.ndarray | None = None) -> np.ndarray:
    """Block ids for one bootstrap resample: as many draws, with replacement, as there are non-empty blocks.

    Empty blocks (fewer sequences than blocks) are never drawn. Drawing ids once and passing
    them to ``resample`` for two checkpoints gives the paired bootstrap of docs/method.md §4. ``filled`` (the
    non-empty block ids) spares a loop of draws recounting them.
    """
    if filled is None:
        filled = np.flatnonzero(result.block_sizes > 0)
    if filled.size < 2:
        raise ValueError(f"the block bootstrap needs ≥ 2 non-empty blocks, got {filled.size}")
    return filled[rng.integers(0, filled.size, size=filled.size)]


def resample(result: GramResult, choice: np.ndarray) -> GramResult:
    """The moments of the blocks listed in ``choice`` (repeats allowed), merged as one token set: an exact
    resample (v0.1's bootstrap replicates; benchmarks/bench_ci.py measures today's first-order ones against it)."""
    choice = np.asarray(choice, dtype=np.int64)
    if choice.size == 0 or choice.min() < 0 or choice.max() >= result.n_blocks:
        raise ValueError(f"block choice must be non-empty ids in [0, {result.n_blocks}), got {choice}")
    if result.blocks is not None:
        return GramResult(result.dim, choice.size, blocks=tuple(result.blocks[b] for b in choice))
    parts = [result.rows[result.row_blocks == b] for b in choice]  # each (token, dim)
    ids = np.concatenate([np.full(p.shape[0], j, dtype=np.int64) for j, p in enumerate(parts)])
    return GramResult(result.dim, choice.size, rows=np.concatenate(parts), row_blocks=ids)
