"""Plain float64 formulas, written as the textbook states them, that the fast analysis kernels are tested against.

None of these is stable or fast: each loses digits where its kernel was built not to (tiny steps,
large offsets), so tests compare them where they are accurate. Benchmarks keep their own copies.
"""

from __future__ import annotations

import numpy as np


def one_shot_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and centered scatter ``Σ_t (x_t − μ)(x_t − μ)ᵀ`` (dim, dim) of the rows of x (token, dim)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean  # (token, dim)
    return mean, xc.T @ xc


def centered_singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of the centered rows of x (token, dim), descending, from a full float64 SVD."""
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def fisher_rao_reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``2 arccos(Σ √(p q))`` per token (token, vocab) → (token,); loses digits as L → 0 (2e-5 relative at 1e-5)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    bc = np.sqrt(p * q).sum(axis=-1)
    return 2 * np.arccos(np.clip(bc, 0.0, 1.0))  # BC can exceed 1 by rounding


def _plogp_over(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Entries ``p log(p / m)`` with 0 · log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p / m), 0.0)


def jensen_shannon_reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``½ Σ p log(p/m) + ½ Σ q log(q/m)`` with m = (p + q)/2, in nats per token (token, vocab) → (token,).

    Summed entry by entry as written, without renormalizing p or q; its terms cancel to O(step²),
    so it keeps about eps/step² relative precision (1e-10 at a step of 1e-3).
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    return 0.5 * _plogp_over(p, m).sum(axis=-1) + 0.5 * _plogp_over(q, m).sum(axis=-1)


def kl_reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``Σ p log(p/q)`` in nats per token (token, vocab) → (token,)."""
    return _plogp_over(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)).sum(axis=-1)


def entropy_reference(p: np.ndarray) -> np.ndarray:
    """``−Σ p log p`` in nats per token (token, vocab) → (token,)."""
    p = np.asarray(p, dtype=np.float64)
    return -_plogp_over(p, np.ones_like(p)).sum(axis=-1)


def hellinger_reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``‖√p − √q‖₂ / √2`` per token (token, vocab) → (token,)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return np.linalg.norm(np.sqrt(p) - np.sqrt(q), axis=-1) / np.sqrt(2.0)
