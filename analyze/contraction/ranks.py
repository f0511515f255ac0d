"""The field's spectrum measures beside a: effective rank, RankMe and α-ReQ's α, with first-order resampled values.

- effective rank ``exp(H(p))``, ``p_k = λ_k / Σ λ`` over the centered eigenvalues λ_k = σ_k² (the spectral entropy
  of the covariance's eigenvalues);
- RankMe ``exp(H(p))``, ``p_k = σ_k / Σ σ`` over the singular values (Garrido et al. 2023; Roy & Vetterli's
  effective rank), on the same centered spectrum;
- α-ReQ's eigenvalue-decay exponent α (λ_k ∝ k^-α, Agrawal et al. 2022) = 2a, a name only (docs/method.md §2).

Both ranks are smooth functions of every eigenvalue, so their resamples come from the same first-order spectra
as a's (analyze/contraction/influence.py): a replicate's spectrum ``λ*_k = Σ_b w_b E[b, k]`` over all ranks.
"""

from __future__ import annotations

import numpy as np

NAMES = ("erank", "rankme")  # the trace columns, in the order of ``ranks``' last axis


def entropy_rank(values: np.ndarray) -> np.ndarray:
    """``exp(−Σ_k p_k log p_k)`` with ``p = values / Σ values`` along the last axis (0 log 0 = 0); NaN where the
    values sum to 0. Between 1 (one non-zero value) and the count of values (all equal)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    total = v.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = v / total
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(h), np.nan)


def ranks(eigenvalues: np.ndarray) -> np.ndarray:
    """(…, 2) effective rank (of λ) and RankMe (of σ = √λ) of eigenvalue rows (…, rank).

    A float64 Gram's eigenvalues are exact to about ε·λ₁, so values below ``rank·ε·λ₁`` are rounding and count as
    0 (as numpy's matrix_rank tolerance does): √ would lift them to ~1e-8·σ₁ each, and RankMe, unlike the
    effective rank, sums them."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if lam.shape[-1]:
        tol = lam.max(axis=-1, keepdims=True) * lam.shape[-1] * np.finfo(np.float64).eps
        lam = np.where(lam > tol, lam, 0.0)
    return np.stack([entropy_rank(lam), entropy_rank(np.sqrt(lam))], axis=-1)


def resampled_ranks(weights: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(replicate, 2) effective rank and RankMe of first-order resampled spectra: ``weights`` (replicate, block) @
    ``shares`` (block, rank), every rank's share (``Eigen.shares(res, rank)``); (0, 2) without replicates."""
    return ranks(weights @ shares) if weights.shape[0] else np.zeros((0, 2))
