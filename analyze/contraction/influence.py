"""Resampled spectra without resampled eigensolves: each sequence block's share of every eigenvalue (docs/method.md §2).

One eigendecomposition of the layer's centered scatter ``M = V Λ Vᵀ`` gives, for each block b, the share
``E[b, k] = Σ_{t ∈ b} ((h_t − μ)·v_k)²`` of eigenvalue λ_k (so ``Σ_b E[b, k] = λ_k``). A resample that weights
block b by ``w_b`` (bootstrap counts, or 0/1 for a half) then has the spectrum ``λ*_k = Σ_b w_b E[b, k]``: the
Rayleigh quotients of its own scatter on the full sample's eigenvectors, the first-order perturbation of its
eigenvalues. Two things follow:

- no resample loses tokens. Drawing blocks with replacement duplicates sequences, and a spectrum's slope depends
  on how many distinct tokens it holds (fewer tokens spread the tail: a rises), so exact resampled eigenvalues
  put that bias into the interval (a outside its own 95 % interval in 27 of 31 real layers). First-order replicates
  are centred on ``a`` by construction and keep the sampling spread; their coverage is in benchmarks/bench_ci.py;
- the cost is one ``eigh`` with vectors and one d×d×k product per block, instead of an ``eigvalsh`` per replicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinal.analyze.contraction.moments import GramResult, draw_blocks


@dataclass(frozen=True)
class Eigen:
    """A layer's centered spectrum and the vectors that give each block's share of it."""

    eigenvalues: np.ndarray  # (rank,) descending, negatives clipped to 0: the spectrum the point estimate fits
    vectors: np.ndarray  # (dim, rank) eigenvectors v_k of the scatter, or (token, rank) u_k of X Xᵀ (rows kept)

    def shares(self, res: GramResult, k: int) -> np.ndarray:
        """(block, k) ``E[b, k]`` for the ``k`` leading values; its columns sum to ``eigenvalues[:k]``.

        Rows kept (n < d): ``X v_k = σ_k u_k``, so ``E[b, k] = λ_k Σ_{t ∈ b} u_tk²``. Scatter mode:
        ``E[b, k] = v_kᵀ M_b v_k + n_b ((μ_b − μ)·v_k)²``, one (d, d) × (d, k) product per block, since
        ``Σ_{t∈b}(h_t − μ)(h_t − μ)ᵀ = M_b + n_b (μ_b − μ)(μ_b − μ)ᵀ``.
        """
        k = max(0, min(int(k), self.eigenvalues.size))
        out = np.zeros((res.n_blocks, k))
        if res.rows is not None:
            np.add.at(out, res.row_blocks, self.vectors[:, :k] ** 2)
            return out * self.eigenvalues[:k]
        v, mean = np.ascontiguousarray(self.vectors[:, :k]), res.total.mean
        for b, s in enumerate(res.blocks):
            if s.n:
                out[b] = np.einsum("ij,ij->j", s.scatter @ v, v) + s.n * ((s.mean - mean) @ v) ** 2
        return out


def eigen(res: GramResult) -> Eigen:
    """The centered spectrum and its vectors from one float64 ``eigh``: of the scatter, or of the rows' n×n Gram
    while n < d (the same non-zero spectrum, docs/method.md §2 "Rank")."""
    rank = min(res.n - 1, res.dim)
    if rank <= 0:
        return Eigen(np.zeros(0), np.zeros((res.dim, 0)))
    if res.rows is not None:
        x = res.rows - res.rows.mean(axis=0)  # (token, dim)
        lam, vec = np.linalg.eigh(x @ x.T)  # ascending
    else:
        lam, vec = np.linalg.eigh(res.total.scatter)
    return Eigen(np.clip(lam[::-1][:rank], 0.0, None), vec[:, ::-1][:, :rank])


def bootstrap_weights(res: GramResult, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, block) draw counts of the block bootstrap: the draws of ``draw_blocks``, in its order, so two
    checkpoints analyzed with one seed resample the same sequences (the paired bootstrap of docs/method.md §4)."""
    w, filled = np.zeros((n_boot, res.n_blocks)), np.flatnonzero(res.block_sizes > 0)
    for i in range(n_boot):
        w[i] = np.bincount(draw_blocks(res, rng, filled), minlength=res.n_blocks)
    return w


def half_weights(res: GramResult, rng: np.random.Generator, splits: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (splits, block) 0/1 masks: random halvings of the filled blocks (with an odd count, the second half
    holds one more)."""
    filled = np.flatnonzero(res.block_sizes > 0)
    one, two = np.zeros((splits, res.n_blocks)), np.zeros((splits, res.n_blocks))
    for i in range(splits):
        perm = rng.permutation(filled)
        half = perm.size // 2
        one[i, perm[:half]] = 1.0
        two[i, perm[half:]] = 1.0
    return one, two
