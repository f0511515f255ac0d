"""Fisher–Rao transport and its companions: docs/method.md §5 invariants and float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from references import fisher_rao_reference, jensen_shannon_reference
from spinal.analyze.transport.distances import QUANTILE_LEVELS, entropy, fisher_rao, jensen_shannon, kl, summarize

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
    # float64 references on the same float32 inputs: KL renormalized as scipy would (the kernel
    # assumes both sum to 1), JS as written (its kernel sums the same per-entry terms).
    pn, qn = pd.exp() / pd.exp().sum(-1, keepdim=True), qd.exp() / qd.exp().sum(-1, keepdim=True)
    kl_ref = (pn * (pn.log() - qn.log())).sum(-1)
    js_ref = torch.from_numpy(jensen_shannon_reference(pd.exp().numpy(), qd.exp().numpy()))
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


def _swapped_pairs(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-entry rows p = (σ(u), σ(−u)) and q = (σ(−u), σ(u)) in float64 log space: |log q − log p| = u exactly."""
    logp = torch.stack([-torch.nn.functional.softplus(-u), -torch.nn.functional.softplus(u)], -1)
    return logp, logp.flip(-1)


def test_jensen_shannon_equals_plain_float64_reference():
    """The fast kernel's two branches and its cap at u = 150 give the textbook sum's values, wherever that is exact."""
    u = torch.tensor([0.01, 0.5, 0.99, 1 - 1e-9, 1.0, 1 + 1e-9, 1.01, 2.0, 40.0, 149.0, 151.0, 300.0],
                     dtype=torch.float64)  # around the u = 1 switch and past the cap
    pairs = [_swapped_pairs(u), (_logp(40).double(), _logp(41).double()),
             (_with_zeros(_logp(42), 43).double(), _logp(44).double()),  # mass where the other has none
             (_logp(45, scale=30.0).double(), _logp(46, scale=30.0).double())]
    near = _logp(47).double()
    pairs.append((near, torch.log_softmax(near + 0.5 * _logp(48, scale=1.0).double(), -1)))  # JS ≈ 0.01
    for p, q in pairs:
        ref = jensen_shannon_reference(p.exp().numpy(), q.exp().numpy())
        assert (ref > 1e-6).all()  # steps large enough for the plain sum to keep ~1e-12 relative
        got64 = jensen_shannon(p, q)
        assert got64.dtype == torch.float64
        np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-12)
        p32, q32 = p.float(), q.float()
        ref32 = jensen_shannon_reference(p32.double().exp().numpy(), q32.double().exp().numpy())
        np.testing.assert_allclose(jensen_shannon(p32, q32).numpy(), ref32, rtol=2e-6)  # float32 arithmetic


def test_summarize_equals_float64_mean_and_quantiles():
    rng = np.random.default_rng(0)
    values = rng.exponential(size=143).astype(np.float32)  # per-token L of one step, as lens_pass keeps it
    got = summarize(values)
    wide = values.astype(np.float64)
    assert got.count == 143
    assert got.mean == pytest.approx(wide.mean(), rel=1e-15)
    quantiles = (got.q05, got.q25, got.q50, got.q75, got.q95)
    np.testing.assert_allclose(quantiles, np.quantile(wide, QUANTILE_LEVELS), rtol=1e-15)
    assert got.q05 < got.q50 < got.q95
    empty = summarize(np.zeros(0, dtype=np.float32))
    assert empty.count == 0 and math.isnan(empty.mean) and math.isnan(empty.q50)
    with pytest.raises(ValueError, match="per-token"):
        summarize(values.reshape(11, 13))
