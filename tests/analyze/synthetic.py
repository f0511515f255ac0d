"""Layers with a known spectrum, to check the intervals: tokens in sequences, power-law covariance, optional massive
coordinate and bf16 rounding (tests/analyze/test_influence.py, benchmarks/bench_ci.py).

``H = (√(1−s)·Z + √s·U[seq]) · diag(k^-a) · Qᵀ``: Z (token, d) and U (sequence, d) standard normal, so tokens of
one sequence share a component of variance share s, and the population covariance is ``Q diag(k^-2a) Qᵀ`` (σ_k ∝
k^-a exactly) whatever s is. A massive coordinate adds a near-constant channel 50× the top scale (centering
removes most of it; its variance is a spike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.moments import GramResult


@dataclass(frozen=True)
class Layer:
    """How to draw one synthetic layer."""

    dim: int
    tokens: int
    a: float  # population exponent: σ_k ∝ k^-a
    tokens_per_sequence: int = 16
    sequence_share: float = 0.3  # variance share of the per-sequence component
    massive: bool = False
    bf16: bool = False

    @property
    def storage_dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


def rotation(dim: int, seed: int = 123) -> np.ndarray:
    """A fixed random orthogonal basis (dim, dim)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q


def sequences(spec: Layer) -> np.ndarray:
    """(tokens,) sequence ids: at least 2 sequences of about ``tokens_per_sequence`` tokens, in order."""
    n_seq = max(2, spec.tokens // spec.tokens_per_sequence)
    return np.repeat(np.arange(n_seq), -(-spec.tokens // n_seq))[: spec.tokens]


def noise(spec: Layer, rng: np.random.Generator) -> np.ndarray:
    """(tokens, dim) standard-normal draws with the sequence structure: ``√(1−s)·Z + √s·U[seq]``."""
    seq, s = sequences(spec), spec.sequence_share
    z = rng.standard_normal((spec.tokens, spec.dim)) * np.sqrt(1 - s)
    return z + rng.standard_normal((int(seq[-1]) + 1, spec.dim))[seq] * np.sqrt(s)


def paired_noise(spec: Layer, rng: np.random.Generator, redraw: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Two checkpoints' draws on one token stream: a common ``noise`` with a ``redraw`` share of its variance drawn
    afresh for each, alike in law (exchangeable), so with one exponent E[Δa] = 0 exactly, at any N."""
    z = noise(spec, rng) * np.sqrt(1 - redraw)
    return z + noise(spec, rng) * np.sqrt(redraw), z + noise(spec, rng) * np.sqrt(redraw)


def draw(spec: Layer, rng: np.random.Generator, q: np.ndarray, z: np.ndarray | None = None,
         a: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's stored rows (token, dim) float32, their sequence ids, and the standard-normal draws behind them.

    Passing ``z`` (the draws of another layer) with a different ``a`` gives a paired checkpoint: the same tokens
    seen through another spectrum, whose exponent differs by exactly ``a − spec.a`` in the population.
    """
    seq = sequences(spec)
    if z is None:
        z = noise(spec, rng)
    h = (z * np.arange(1, spec.dim + 1.0) ** -(spec.a if a is None else a)) @ q.T
    if spec.massive:
        h[:, 3] += 50.0 * (1 + 0.05 * rng.standard_normal(spec.tokens))
    h = h.astype(np.float32)
    if spec.bf16:
        h = torch.from_numpy(h).to(torch.bfloat16).to(torch.float32).numpy()
    return h, seq, z


def moments(h: np.ndarray, seq: np.ndarray, blocks: int = 16) -> GramResult:
    """The accumulated moments analyze reads: sequence s in block s mod ``blocks``."""
    acc = GramAccumulator(h.shape[1], blocks=blocks)
    acc.update(h, seq % blocks)
    return acc.finish()
