"""Effective rank, RankMe and α-ReQ's α (analyze/contraction/ranks.py) against float64 numpy references: the point values
from a direct eigendecomposition / SVD, the resampled values from brute-force Rayleigh quotients, and the trace's
columns and replicates end to end."""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from spinal.analyze.contraction.influence import bootstrap_weights, eigen
from spinal.analyze.contraction.layer_spectrum import spectrum_of
from spinal.analyze.contraction.moments import GramResult, GramStats
from spinal.analyze.contraction.ranks import entropy_rank, ranks, resampled_ranks
from spinal.analyze.seeds import Purpose, rng


def _data(n=400, d=16, blocks=8, seed=0):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((n, d)) * np.arange(1, d + 1.0) ** -0.8) @ synthetic.rotation(d).T + 0.5
    ids = r.integers(0, blocks, n)
    return x, ids, GramResult(d, blocks, blocks=tuple(GramStats.from_rows(x[ids == b]) for b in range(blocks)))


def reference(x: np.ndarray) -> tuple[float, float]:
    """Effective rank of the covariance's eigenvalues and RankMe of the singular values, straight from numpy."""
    xc = x - x.mean(axis=0)
    lam = np.linalg.eigvalsh(xc.T @ xc / x.shape[0])
    lam = np.clip(lam, 0, None)
    p = lam / lam.sum()
    p = p[p > 0]
    sv = np.linalg.svd(xc, compute_uv=False)
    q = sv / sv.sum()
    q = q[q > 0]
    return float(np.exp(-(p * np.log(p)).sum())), float(np.exp(-(q * np.log(q)).sum()))


def test_entropy_rank_limits():
    assert entropy_rank(np.ones(7)) == pytest.approx(7.0)
    assert entropy_rank(np.array([3.0, 0, 0, 0])) == pytest.approx(1.0)
    assert entropy_rank(np.array([2.0, 2.0, 0.0])) == pytest.approx(2.0)
    assert np.isnan(entropy_rank(np.zeros(3)))
    # scale-free: only the normalised spectrum counts
    v = np.random.default_rng(0).uniform(0, 1, 20)
    assert entropy_rank(1e6 * v) == pytest.approx(entropy_rank(v), rel=1e-12)


def test_point_values_equal_a_direct_float64_eigendecomposition():
    x, _, res = _data()
    s = spectrum_of(res, 0, storage_dtype="float64", n_boot=50, null_splits=0, seed=0, window=None)
    erank, rankme = reference(x)
    assert s.rank_values[0] == pytest.approx(erank, rel=1e-10)
    assert s.rank_values[1] == pytest.approx(rankme, rel=1e-10)
    assert 1 < rankme and erank < rankme < x.shape[1]  # σ is flatter than σ² = λ


def test_kept_rows_give_the_same_ranks():
    """Below d tokens the n×n Gram is decomposed; the ranks must not depend on which."""
    r = np.random.default_rng(3)
    x = r.standard_normal((30, 64)) * np.arange(1, 65.0) ** -0.5
    ids = r.integers(0, 4, 30)
    rows = GramResult(64, 4, rows=x, row_blocks=ids)
    np.testing.assert_allclose(ranks(eigen(rows).eigenvalues), reference(x), rtol=1e-9)


def test_resampled_ranks_are_those_of_the_brute_force_first_order_spectra():
    """A replicate's spectrum is the Rayleigh quotient of its reweighted scatter (about the full mean) on the full
    sample's eigenvectors; all-ones weights give the point values exactly, and the replicates are those of the
    bootstrap's own block draws."""
    x, ids, res = _data()
    eig = eigen(res)
    shares = eig.shares(res, eig.eigenvalues.size)
    xc = x - x.mean(axis=0)
    lam, v = np.linalg.eigh(xc.T @ xc)
    v = v[:, ::-1]
    w = bootstrap_weights(res, rng(0, Purpose.BOOTSTRAP), 5)
    for row in w:
        brute = np.einsum("ij,ij->j", (row[ids][:, None] * xc).T @ xc @ v, v)
        np.testing.assert_allclose(resampled_ranks(row[None], shares)[0], ranks(brute), rtol=1e-9)
    np.testing.assert_allclose(resampled_ranks(np.ones((1, 8)), shares)[0], reference(x), rtol=1e-10)
    s = spectrum_of(res, 0, storage_dtype="float64", n_boot=5, null_splits=0, seed=0, window=None)
    np.testing.assert_allclose(s.rank_boot, resampled_ranks(w, shares), rtol=1e-12)


def test_replicates_are_close_to_exact_resampled_ranks():
    """The first-order replicates of a block bootstrap track the exact ranks of the same resampled tokens: the same
    spread (what an interval is made of; it is centred on the point value) and the same order."""
    x, ids, res = _data(n=2000, d=16, blocks=16, seed=4)
    w = bootstrap_weights(res, rng(1, Purpose.BOOTSTRAP), 40)
    eig = eigen(res)
    first = resampled_ranks(w, eig.shares(res, eig.eigenvalues.size))
    exact = np.array([reference(np.repeat(x, w[i][ids].astype(int), axis=0)) for i in range(w.shape[0])])
    spread = exact.std(axis=0)
    assert (spread > 0).all()
    np.testing.assert_allclose(first.std(axis=0), spread, rtol=0.15)
    assert (np.corrcoef(first[:, 0], exact[:, 0])[0, 1] > 0.95) and (np.corrcoef(first[:, 1], exact[:, 1])[0, 1] > 0.95)


def test_without_rank_intervals_the_values_stay_and_a_is_unchanged():
    _, _, res = _data()
    kw = dict(storage_dtype="float64", n_boot=30, null_splits=4, seed=0, window=None)
    on, off = spectrum_of(res, 0, **kw), spectrum_of(res, 0, rank_intervals=False, **kw)
    assert off.rank_boot.shape == (0, 2) and on.rank_boot.shape == (30, 2)
    np.testing.assert_array_equal(on.rank_values, off.rank_values)
    np.testing.assert_allclose(on.boot, off.boot, rtol=1e-12)
    np.testing.assert_allclose(on.null_diffs, off.null_diffs, rtol=1e-12)
