"""The rank-decay exponent: exact answers, docs/method.md §5 invariants and the window rules that make them hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from references import centered_singular_values
from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.layer_spectrum import spectrum_of
from spinal.analyze.contraction.spectrum import with_curvature
from spinal.analyze.contraction.moments import GramResult
from spinal.analyze.contraction.intervals import t_interval
from spinal.analyze.contraction.slopes import fit_mle, fit_wls
from spinal.analyze.contraction.spectrum import (
    count_spikes,
    default_window,
    fit_gram,
    fit_spectrum,
    noise_floor,
    singular_values,
)

N, D = 16384, 256


def _power_law_h(a: float, seed: int, n: int = N, d: int = D) -> np.ndarray:
    """``H = Z · diag(k^-a) · Qᵀ`` (token, dim): Z standard normal, Q random orthogonal."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (z * np.arange(1, d + 1.0) ** -a) @ q.T


def _accumulate(h: np.ndarray | torch.Tensor, blocks: int = 16) -> GramResult:
    n, d = h.shape
    ids = np.arange(n) * blocks // n  # contiguous "sequences" per block
    acc = GramAccumulator(d, blocks)
    for start in range(0, n, 2048):
        acc.update(h[start : start + 2048], ids[start : start + 2048])
    return acc.finish()


def _fit_exact(sv: np.ndarray, **kw):
    """fit_spectrum of a given σ sequence, as if from 1e6 tokens stored in float64."""
    return fit_spectrum(sv**2, n_tokens=10**6, dim=sv.size, rms=float(np.sqrt((sv**2).sum() / (1e6 * sv.size))),
                        storage_dtype="float64", **kw)


@pytest.mark.parametrize("shape", [(300, 60), (30, 80)])
def test_singular_values_match_full_svd(shape):
    rng = np.random.default_rng(0)
    n, d = shape
    u, _ = np.linalg.qr(rng.standard_normal((n, min(n, d))))
    v, _ = np.linalg.qr(rng.standard_normal((d, min(n, d))))
    h = (u * np.geomspace(1.0, 1e-6, min(n, d))) @ v.T + 0.5  # σ spanning 1e6, plus an offset
    sv = singular_values(_accumulate(h, blocks=2).eigenvalues())
    ref = centered_singular_values(h)[: sv.size]
    rel = np.abs(sv - ref) / ref
    # A Gram squares the condition number: |Δσ_k|/σ_k ≈ ½|Δλ_k|/λ_k with |Δλ_k| ≲ eps·λ₁, so
    # 1e-8 holds down to σ₁·1e-4, and eps·(σ₁/σ_k)² bounds the error below (2e-8 seen at 1e-5).
    top = ref >= 1e-4 * ref[0]
    assert top.sum() >= 0.6 * sv.size
    assert rel[top].max() <= 1e-8
    tail = ref >= 1e-6 * ref[0]
    assert (rel[tail] <= np.finfo(float).eps * (ref[0] / ref[tail]) ** 2 + 1e-12).all()


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5])
def test_exact_power_law_returns_a(a):
    fit = _fit_exact(np.arange(1, 1001.0) ** -a)
    assert fit.status == "ok" and fit.spikes == 0
    assert (fit.k_lo, fit.k_hi) == (50, 500)
    assert fit.a_wls == pytest.approx(a, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.a_mle == pytest.approx(a, rel=0.03)  # the MLE models sampled, not deterministic, ranks


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5])
def test_spikes_are_skipped_and_the_bulk_is_ranked_after_them(a):
    bulk = np.arange(1, 1001.0) ** -a
    fit = _fit_exact(np.concatenate([[3e3, 1e3], bulk]))
    assert fit.spikes == 2 and fit.k_lo >= 3
    assert fit.a_wls == pytest.approx(a, abs=1e-10)
    assert fit.top1_share == pytest.approx(9e6 / (9e6 + 1e6 + (bulk**2).sum()))


def test_count_spikes():
    bulk = np.arange(1, 201.0) ** -2.0  # steepest bulk the rule allows: σ1/σ2 = 4
    assert count_spikes(bulk) == 0
    assert count_spikes(np.arange(1, 201.0) ** -0.5) == 0
    for ratio in (10.0, 1e3):
        assert count_spikes(np.concatenate([[ratio], bulk])) == 1
    assert count_spikes(np.concatenate([[1e4, 3e3, 1e3, 300.0], bulk])) == 4  # a cascade of spikes
    assert count_spikes(np.array([1.0, 0.9, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0])) == 0  # rank loss, not spikes


def test_default_window_is_integer_exact():
    assert default_window(260, 0, 10**9) == (13, 130)  # 0.05 · 260 is 13.000000000000002 in floats
    assert default_window(1000, 60, 300) == (61, 300)
    assert default_window(40, 0, 10**9) == (5, 20)


def test_mle_recovers_pareto_tail_with_censored_top():
    rng = np.random.default_rng(1)
    beta = 1.0  # a = 1/(2β) = 0.5
    lam = np.sort((1 - rng.random(20000)) ** (-1 / beta))[::-1]
    sv = np.sqrt(lam)
    for k_lo in (1, 200):  # 199 values above the window are censored
        fit = fit_mle(sv, k_lo, 10000)
        assert fit.a == pytest.approx(0.5, rel=0.05)
        assert fit.ks < 0.02


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5])
def test_synthetic_power_law_is_recovered(a):
    h = _power_law_h(a, seed=int(10 * a))
    fit = fit_gram(_accumulate(h), storage_dtype="float64")
    assert fit.status == "ok"
    assert fit.a_wls == pytest.approx(a, abs=0.02)
    assert fit.a_mle == pytest.approx(a, abs=0.05)


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5])
def test_recovery_survives_a_massive_coordinate_and_bf16(a):
    h = _power_law_h(a, seed=int(10 * a) + 1)
    rng = np.random.default_rng(2)
    rms = np.sqrt((h**2).mean())
    h[:, 7] += 1e4 * rms * (1 + 0.3 * rng.standard_normal(N))  # massive activation channel
    for name, stored in (("spike", h), ("spike+bf16", torch.from_numpy(h).to(torch.bfloat16))):
        fit = fit_gram(_accumulate(stored), storage_dtype="bfloat16" if "bf16" in name else "float64")
        assert fit.spikes == 1, name
        assert fit.top1_share > 0.99, name
        assert fit.status == "ok", name
        assert fit.a_wls == pytest.approx(a, abs=0.05), name
    plain = torch.from_numpy(_power_law_h(a, seed=int(10 * a) + 2)).to(torch.bfloat16)
    fit = fit_gram(_accumulate(plain), storage_dtype=torch.bfloat16)
    assert fit.status == "ok" and fit.a_wls == pytest.approx(a, abs=0.05)


def test_raw_spectrum_shows_the_mean_as_a_spike_the_centered_one_does_not():
    h = _power_law_h(1.0, seed=8, n=4096, d=128)
    h += 200 * np.sqrt((h**2).mean()) * np.random.default_rng(9).standard_normal(128) / np.sqrt(128)  # σ_mean ≈ 20 σ₁
    res = _accumulate(h)
    centered = fit_gram(res, storage_dtype="float64")
    raw = fit_gram(res, storage_dtype="float64", centered=False)
    assert (centered.spikes, raw.spikes) == (0, 1)
    assert (centered.rank, raw.rank) == (128, 128)
    assert raw.top1_share > 0.99 > centered.top1_share
    assert centered.a_wls == pytest.approx(1.0, abs=0.03)
    assert raw.a_wls == pytest.approx(1.0, abs=0.03)


def test_noise_floor_ends_the_window_before_bf16_flattens_the_tail():
    h = torch.from_numpy(_power_law_h(2.0, seed=3, n=4096, d=256)).to(torch.bfloat16)
    res = _accumulate(h)
    fit = fit_gram(res, storage_dtype="bfloat16")
    ignoring = fit_gram(res, storage_dtype="float64")  # pretends the stored values were exact
    assert fit.floor_rank < ignoring.k_hi == 128
    assert fit.k_hi == fit.floor_rank
    assert fit.a_wls == pytest.approx(2.0, abs=0.05)
    assert ignoring.a_wls < 1.8  # the flat rounding bulk drags the far tail


def test_noise_floor_bounds_the_rounding_matrix():
    rng = np.random.default_rng(4)
    h = rng.standard_normal((2000, 100)) * rng.uniform(0.5, 2.0, 100) + 0.3
    err = torch.from_numpy(h).to(torch.bfloat16).to(torch.float64).numpy() - h  # (token, dim)
    top = np.linalg.svd(err, compute_uv=False)[0]
    floor = noise_floor(np.array([1.0]), 2000, 100, np.sqrt((h**2).mean(0)), "bf16")
    assert 0.3 * floor < top <= floor


def test_rescaling_h_leaves_the_fit_unchanged():
    h = _power_law_h(1.0, seed=5, n=4096, d=128)
    ref = fit_gram(_accumulate(h), storage_dtype="float32")
    for scale in (1e-3, 7.3, 1e4):
        fit = fit_gram(_accumulate(scale * h), storage_dtype="float32")
        assert (fit.k_lo, fit.k_hi, fit.spikes, fit.status) == (ref.k_lo, ref.k_hi, ref.spikes, ref.status)
        assert fit.a_wls == pytest.approx(ref.a_wls, abs=1e-9)
        assert fit.a_mle == pytest.approx(ref.a_mle, abs=1e-9)


def test_too_few_ranks_is_a_status_not_a_number():
    h = _power_law_h(1.0, seed=6, n=15, d=64)  # r = 14: window [5, 7]
    fit = fit_gram(_accumulate(h, blocks=3), storage_dtype="float64")
    assert fit.status == "too-few-ranks"
    assert math.isnan(fit.a_wls) and math.isnan(fit.r2) and math.isnan(fit.a_mle)
    narrow = _fit_exact(np.arange(1, 1001.0) ** -1.0, window=(100, 150))  # 51 ranks but < one octave
    assert narrow.status == "too-few-ranks" and math.isnan(narrow.a_wls)
    with pytest.raises(ValueError, match="rank"):
        _fit_exact(np.arange(1, 101.0) ** -1.0, window=(5, 101))


def test_a_window_over_the_spikes_is_a_poor_fit():
    fit = _fit_exact(np.concatenate([[1e3], np.arange(1, 1001.0) ** -1.0]), window=(1, 500))
    assert fit.spikes == 1 and fit.status == "poor-fit"
    with pytest.raises(ValueError, match="spikes"):
        fit_wls(np.concatenate([[1e3], np.arange(1, 101.0) ** -1.0]), 1, 50, spikes=1)


def test_curved_spectrum_is_a_poor_fit():
    sv = np.exp(-np.arange(1, 1001.0) / 100)
    fit = _fit_exact(sv)
    assert fit.status == "poor-fit" and fit.r2 < 0.98


def test_wls_is_weighted_by_inverse_rank():
    sv = np.arange(1, 101.0) ** -1.0
    sv[-1] *= 10  # a bad far-tail point moves a 1/k-weighted fit less than an unweighted one
    k = np.arange(20, 101)
    unweighted = -np.polyfit(np.log(k), np.log(sv[19:]), 1)[0]
    weighted = fit_wls(sv, 20, 100).a
    assert abs(weighted - 1.0) < abs(unweighted - 1.0)


def _spectrum(res, n_boot=40, seed=0):
    return spectrum_of(res, 0, storage_dtype="float64", n_boot=n_boot, null_splits=8, seed=seed, window=None)


def test_bootstrap_ci_brackets_the_exponent():
    """The trace's interval: a t interval on the spread of the block-bootstrap replicates layer_spectrum draws."""
    h = _power_law_h(1.0, seed=7, n=4096, d=128)
    res = _accumulate(h)
    s = _spectrum(res)
    point = fit_gram(res, storage_dtype="float64").a_wls
    assert abs(s.centered.a_wls - point) < 1e-12  # eigh's spectrum fits as eigvalsh's does
    assert s.boot.shape == (40,) and np.unique(s.boot).size > 30  # distinct resamples, not one repeated
    assert abs(s.boot.mean() - point) < 0.25 * s.boot.std()  # first-order replicates centre on the estimate
    lo, hi = t_interval(point, s.boot, s.blocks)
    assert lo < point < hi and s.blocks == 16
    assert lo - 0.02 < 1.0 < hi + 0.02  # covers the truth up to the estimator's ±0.02 bias
    assert hi - lo < 0.1
    np.testing.assert_array_equal(_spectrum(res).boot, s.boot)  # seeded
    assert not np.array_equal(_spectrum(res, seed=1).boot, s.boot)


def _curvature_status(h: np.ndarray) -> tuple[float, float, float, str]:
    s = _spectrum(_accumulate(h), n_boot=60)
    lo, hi = t_interval(s.centered.curvature, s.curv_boot, s.blocks)
    return s.centered.curvature, lo, hi, with_curvature(s.centered.status, lo, hi)


def test_a_straight_power_law_is_not_curved_and_a_bend_is():
    curv, lo, hi, status = _curvature_status(_power_law_h(1.0, seed=7, n=4096, d=128))
    assert abs(curv) < 0.05 and lo < 0 < hi and status == "ok"
    rng = np.random.default_rng(3)  # σ_k = k^-0.8 up to rank 24, then k^-1.1: R² ≥ 0.98 still passes it
    k = np.arange(1, 129.0)
    s = np.where(k <= 24, k**-0.8, 24.0**-0.8 * (k / 24) ** -1.1)
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    h = (rng.standard_normal((4096, 128)) * s) @ q.T
    res = _accumulate(h)
    fit = fit_gram(res, storage_dtype="float64")
    assert fit.r2 >= 0.98  # the fit alone calls this one slope
    curv, lo, hi, status = _curvature_status(h)
    assert curv > 0.15 and lo > 0 and status == "curved"
