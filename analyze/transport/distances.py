"""Per-token distances between adjacent layers' logit-lens distributions, led by the Fisher–Rao step L (docs/method.md §3).

Every distance takes one chunk of log-probabilities (token, vocab), as torch tensors, and returns
one value per token; callers chunk over tokens so no more than chunk × vocab is ever held.
``summarize`` turns a layer's per-token values into the mean and quantiles the trace reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Quantile levels of the per-token summaries: alignment shifts are sparse (a few % of positions,
# docs/method.md §3), so the tails are reported next to the mean.
QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def _work(logp: torch.Tensor, logq: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Checks shapes and upcasts to at least float32: bf16/fp16 log-probs lose the small steps L measures."""
    if logp.ndim != 2 or (logq is not None and logq.shape != logp.shape):
        shapes = (tuple(logp.shape),) if logq is None else (tuple(logp.shape), tuple(logq.shape))
        raise ValueError(f"expected (token, vocab) log-probs of one shape, got {shapes}")
    dtype = torch.promote_types(logp.dtype, torch.float32)  # float64 input stays float64
    if logq is not None:
        dtype = torch.promote_types(dtype, logq.dtype)
    if logq is None:
        return (logp.to(dtype),)
    return logp.to(dtype), logq.to(dtype)


def fisher_rao(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Fisher–Rao distance ``L = 2 arccos BC = 4 arcsin(‖√p − √q‖₂ / 2)`` per token, in [0, π].

    The chord form keeps full relative precision for tiny steps, where float32 ``2 arccos(BC)``
    returns exactly 0 below L ≈ 1e-3 (docs/method.md §3, "Stable formula").
    """
    logp, logq = _work(logp, logq)
    # ‖√p − √q‖₂ per token (token,), with √p = exp(½ log p): no cancellation in 1 − BC
    chord = torch.linalg.vector_norm(torch.exp(0.5 * logp) - torch.exp(0.5 * logq), dim=-1)
    return fisher_rao_from_chord(chord)


def fisher_rao_from_chord(chord: torch.Tensor) -> torch.Tensor:
    """``L = 4 arcsin(c / 2)`` per token from the chord ``c = ‖√p − √q‖₂``, in [0, π]."""
    half_chord = (chord / 2).clamp(0.0, 1.0)  # ≤ √2/2 if normalized; guards asin
    return (4 * torch.asin(half_chord)).clamp(0.0, math.pi)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats per token; +inf where p puts mass on q's zeros.

    Summed as Σ p (e^d − 1 − d) with d = log q − log p (equal to Σ p log(p/q) when both sum to 1):
    every term is ≥ 0 and O(d²), so tiny steps between deep layers do not cancel to noise the
    way float32 Σ p log(p/q) does. For "KL to the final layer" (tuned-lens convention) pass the
    final layer as p.
    """
    logp, logq = _work(logp, logq)
    p, q, d = torch.exp(logp), torch.exp(logq), logq - logp  # d is exact for close inputs (Sterbenz)
    small = p * (torch.expm1(d) - d)  # |d| < 1: no cancellation in e^d − 1
    large = q - p - p * d  # q = 0 gives +inf here, as it should
    terms = torch.where(d.abs() < 1, small, large)
    return torch.where(p == 0, q, terms).sum(dim=-1)  # p = 0 entries carry q (Σ q − Σ p = 0)


def jensen_shannon(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence in nats per token, ``½ KL(p ‖ m) + ½ KL(q ‖ m)``, m = (p + q)/2, in [0, ln 2].

    Per entry, with u = |log q − log p|, M = max(p, q) and e = expm1(−u), the two KL terms sum to
    ``½ M g(u)`` with two exact forms of g, each used where it has no cancellation:

        u < 1:  g = −e u/2 − (2 + e) log1p(2 sinh²(u/4))   (O(u²): tiny steps keep their digits)
        u ≥ 1:  g = −(2 + e) log1p(e/2) − (1 + e) u         (→ ln 2 exactly when one side is 0)

    u is capped at 150 (g = ln 2 there to float32 precision), so zeros need no branch of their own.
    """
    logp, logq = _work(logp, logq)
    u = torch.sub(logq, logp).abs_().nan_to_num_(nan=0.0).clamp_(max=150.0)  # both −inf: M = 0 anyway
    big = torch.maximum(logp, logq).exp_()  # M = max(p, q)
    e = torch.neg(u).expm1_()  # e^{−u} − 1, in [−1, 0]
    two_e = e + 2.0  # 1 + e^{−u}
    small = torch.mul(u, 0.25).sinh_().square_().mul_(2.0).log1p_().mul_(two_e)  # (1 + e^{−u}) log cosh(u/2)
    small = torch.mul(e, u).mul_(-0.5).sub_(small)
    large = torch.mul(e, 0.5).log1p_().mul_(two_e).neg_().sub_(e.add_(1.0).mul_(u))
    g = torch.where(u < 1.0, small, large)
    return g.mul_(big).sum(dim=-1).mul_(0.5).clamp_min(0.0)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats per token, ``−Σ p log p`` with 0·log 0 = 0."""
    (logp,) = _work(logp)
    terms = torch.exp(logp) * logp
    return -torch.where(torch.isneginf(logp), torch.zeros_like(terms), terms).sum(dim=-1)


@dataclass(frozen=True)
class TransportSummary:
    """Mean and quantiles of one per-token quantity over all tokens of a layer."""

    count: int
    mean: float  # computed in float64
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float


def summarize(values: np.ndarray) -> TransportSummary:
    """Mean and QUANTILE_LEVELS quantiles (linear interpolation) of per-token values (token,) in float64; NaN if empty."""
    v = np.asarray(values, dtype=np.float64)  # float32 per-token values widen exactly
    if v.ndim != 1:
        raise ValueError(f"expected per-token values (token,), got shape {v.shape}")
    if v.size == 0:
        return TransportSummary(0, *([math.nan] * (1 + len(QUANTILE_LEVELS))))
    with np.errstate(invalid="ignore"):  # infinite KL values interpolate to inf or NaN, as they should
        qs = np.quantile(v, QUANTILE_LEVELS)
    return TransportSummary(int(v.size), float(v.mean()), *(float(q) for q in qs))
