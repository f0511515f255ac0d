"""Fisher–Rao transport and its companions: METHOD.md §5 invariants and float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from spinal.analyze.transport import (
    QUANTILE_LEVELS,
    TransportStats,
    entropy,
    fisher_rao,
    fisher_rao_reference,
    hellinger,
    jensen_shannon,
    kl,
)

PI32 = torch.tensor(math.pi, dtype=torch.float32).item()  # float32 π, the top of the clamp


def _logp(seed: int, tokens: int = 16, vocab: int = 1000, scale: float = 3.0) -> torch.Tensor:
    """float32 log-softmax of random logits (token, vocab); large ``scale`` gives peaked rows."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(tokens, vocab, generator=g, dtype=torch.float64), -1).float()


def _with_zeros(logp: torch.Tensor, seed: int) -> torch.Tensor:
    """Zero out a random 30% of each row (log p = −inf) and renormalize."""
    g = torch.Generator().manual_seed(seed)
    masked = logp.masked_fill(torch.rand(logp.shape, generator=g) < 0.3, -math.inf)
    return torch.log_softmax(masked, -1)


def test_bounds_identity_and_symmetry():
    pairs = [(_logp(0), _logp(1)), (_logp(2, scale=30.0), _logp(3, scale=30.0)),
             (_with_zeros(_logp(4), 5), _with_zeros(_logp(6), 7))]
    for p, q in pairs:
        dist = fisher_rao(p, q)
        assert dist.shape == (p.shape[0],) and dist.dtype == torch.float32
        assert (dist >= 0).all() and (dist <= PI32).all()
        assert torch.equal(fisher_rao(p, p), torch.zeros(p.shape[0]))
        assert torch.equal(dist, fisher_rao(q, p))
        assert (dist > 0.1).all()


def test_disjoint_supports_are_pi_apart():
    p = torch.full((3, 6), -math.inf)
    q = torch.full((3, 6), -math.inf)
    p[:, :2] = math.log(0.5)
    q[:, 2:] = math.log(0.25)
    assert torch.allclose(fisher_rao(p, q), torch.full((3,), math.pi), rtol=1e-6, atol=0)
    assert torch.allclose(jensen_shannon(p, q), torch.full((3,), math.log(2)), rtol=1e-6)
    assert torch.allclose(hellinger(p, q), torch.ones(3), rtol=1e-6)


def test_stable_formula_equals_float64_arccos_where_that_is_accurate():
    p, q = _logp(10), _logp(11)
    for other in (q, torch.log_softmax(p.double() + 0.05 * _logp(12).double(), -1).float()):
        ref = fisher_rao_reference(p.double().exp(), other.double().exp())
        assert (ref > 1e-2).all()
        np.testing.assert_allclose(fisher_rao(p, other).numpy(), ref, rtol=2e-5)


def test_tiny_steps_keep_precision_where_float32_arccos_returns_zero():
    logits = 3.0 * torch.randn(8, 50000, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    nudge = torch.randn(8, 50000, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    p = torch.log_softmax(logits, -1).float()
    q = torch.log_softmax(logits + 1e-4 * nudge, -1).float()
    # High-precision reference on the same float32 inputs: the chord formula in float64.
    chord = torch.linalg.vector_norm(torch.exp(0.5 * p.double()) - torch.exp(0.5 * q.double()), dim=-1)
    ref = 4 * torch.asin(chord / 2)
    assert ((ref > 3e-5) & (ref < 3e-4)).all()  # L ≈ 1e-4
    torch.testing.assert_close(fisher_rao(p, q).double(), ref, rtol=1e-3, atol=0)
    # Naive float32: even the exactly rounded BC = 1 − L²/8 is 1.0 in float32, so arccos gives 0.
    bc32 = torch.exp(0.5 * (p.double() + q.double())).sum(-1).float()
    assert torch.equal(2 * torch.arccos(bc32.clamp(max=1.0)), torch.zeros(8))


def test_tiny_steps_keep_precision_in_kl_and_jensen_shannon():
    logits = 3.0 * torch.randn(8, 50000, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    nudge = torch.randn(8, 50000, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    p = torch.log_softmax(logits, -1).float()
    q = torch.log_softmax(logits + 1e-3 * nudge, -1).float()
    pd, qd = p.double(), q.double()
    # float64 references on the same float32 inputs, each renormalized as scipy would.
    pn, qn = pd.exp() / pd.exp().sum(-1, keepdim=True), qd.exp() / qd.exp().sum(-1, keepdim=True)
    kl_ref = (pn * (pn.log() - qn.log())).sum(-1)
    m = (pn + qn) / 2
    js_ref = 0.5 * (pn * (pn.log() - m.log())).sum(-1) + 0.5 * (qn * (qn.log() - m.log())).sum(-1)
    assert ((kl_ref > 1e-7) & (kl_ref < 1e-6)).all()  # KL ≈ L²/4 at L ≈ 1e-3
    torch.testing.assert_close(kl(p, q).double(), kl_ref, rtol=1e-4, atol=0)
    torch.testing.assert_close(jensen_shannon(p, q).double(), js_ref, rtol=1e-4, atol=0)
    # The textbook float32 sums lose these values in rounding (measured 5% and 19% off).
    naive_kl = (p.exp() * (p - q)).sum(-1).double()
    log_m = torch.logaddexp(p, q) - math.log(2)
    naive_js = (0.5 * (p.exp() * (p - log_m)).sum(-1) + 0.5 * (q.exp() * (q - log_m)).sum(-1)).double()
    assert ((naive_kl - kl_ref).abs() / kl_ref).max() > 0.02
    assert ((naive_js - js_ref).abs() / js_ref).max() > 0.1


def test_companions_match_scipy_float64():
    p, q = _with_zeros(_logp(20), 21), _logp(22)
    pn, qn = p.double().exp().numpy(), q.double().exp().numpy()
    np.testing.assert_allclose(hellinger(p, q).numpy(), np.linalg.norm(np.sqrt(pn) - np.sqrt(qn), axis=-1) / np.sqrt(2),
                               rtol=1e-5)
    np.testing.assert_allclose(jensen_shannon(p, q).numpy(), jensenshannon(pn, qn, axis=-1) ** 2, rtol=1e-4)
    np.testing.assert_allclose(kl(p, q).numpy(), scipy_entropy(pn, qn, axis=-1), rtol=1e-4)
    np.testing.assert_allclose(entropy(p).numpy(), scipy_entropy(pn, axis=-1), rtol=1e-5)
    assert torch.isinf(kl(q, p)).all()  # q puts mass where p has zeros
    assert torch.equal(kl(p, p), torch.zeros(p.shape[0]))
    assert torch.equal(jensen_shannon(p, p), torch.zeros(p.shape[0]))


def test_low_precision_inputs_are_upcast():
    p, q = _logp(30), _logp(31)
    got = fisher_rao(p.to(torch.bfloat16), q.to(torch.bfloat16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fisher_rao(p.to(torch.bfloat16).float(), q.to(torch.bfloat16).float()))
    with pytest.raises(ValueError, match="one shape"):
        fisher_rao(p, q[:, :10])


def test_transport_stats_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    chunks = [rng.exponential(size=n).astype(np.float32) for n in (5, 100, 37, 1)]
    single = TransportStats()
    for c in chunks:
        single.update(torch.from_numpy(c))
    left, right = TransportStats(), TransportStats()
    for c in chunks[:2]:
        left.update(c)
    for c in chunks[2:]:
        right.update(c)
    merged = left.merge(right).result()
    assert merged == single.result()
    everything = np.concatenate(chunks).astype(np.float64)
    assert merged.count == everything.size
    assert merged.mean == pytest.approx(everything.mean(), rel=1e-12)
    quantiles = (merged.q05, merged.q25, merged.q50, merged.q75, merged.q95)
    np.testing.assert_allclose(quantiles, np.quantile(everything, QUANTILE_LEVELS), rtol=1e-12)
    empty = TransportStats().result()
    assert empty.count == 0 and math.isnan(empty.mean)
