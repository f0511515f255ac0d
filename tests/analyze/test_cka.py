"""Linear CKA between two checkpoints (analyze/compare/cka.py): the streamed per-block moments against the direct float64
formula on small data, its invariances, and its jackknife against a brute-force one (end to end: tests/analyze/test_field_measures.py)."""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from spinal.analyze.compare.cka import (CrossGramAccumulator, CrossStats, grouped, jackknife, linear_cka, merge,
                                        paired, side)


def _pair(n=300, dx=12, dy=9, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, dx)) * np.arange(1, dx + 1.0) ** -0.6 + 2.0  # an offset: centering must matter
    y = x[:, :dy] @ r.standard_normal((dy, dy)) + 0.5 * r.standard_normal((n, dy)) - 1.0
    return x, y, r.integers(0, 8, n)


def direct(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, linear kernel, from the N×N Gram matrices: HSIC(K, L) / √(HSIC(K, K) HSIC(L, L))
    with K = XXᵀ, L = YYᵀ and the centering matrix H."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l)))


def _streamed(x, y, ids, blocks=8, chunk=37):
    acc = CrossGramAccumulator(x.shape[1], y.shape[1], blocks)
    for s in range(0, x.shape[0], chunk):
        acc.update(x[s : s + chunk], y[s : s + chunk], ids[s : s + chunk])
    return acc.blocks


def test_streamed_blocks_equal_the_direct_float64_formula():
    x, y, ids = _pair()
    blocks = _streamed(x, y, ids)
    want = direct(x, y)
    assert linear_cka(merge(blocks)) == pytest.approx(want, rel=1e-11)
    assert jackknife(blocks)["cka"] == pytest.approx(want, rel=1e-11)
    assert 0 < want < 1


def test_orthogonal_transforms_and_isotropic_scales_leave_it_unchanged():
    x, y, ids = _pair(seed=1)
    base = linear_cka(merge(_streamed(x, y, ids)))
    qx, qy = synthetic.rotation(x.shape[1]), synthetic.rotation(y.shape[1])
    for xx, yy in ((x @ qx, y), (x, y @ qy), (37.0 * x, y), (x, 1e-3 * y), (-2.5 * x @ qx, 4.0 * y @ qy),
                   (x + 100.0, y - 5.0)):
        assert linear_cka(merge(_streamed(xx, yy, ids))) == pytest.approx(base, rel=1e-9)


def test_a_representation_against_itself_gives_one_with_a_zero_width_interval():
    x, _, ids = _pair(seed=2)
    out = jackknife(_streamed(x, x, ids))
    assert out["cka"] == pytest.approx(1.0, abs=1e-13)
    assert out["cka_se"] == pytest.approx(0.0, abs=1e-12)
    assert out["cka_lo"] == pytest.approx(1.0, abs=1e-12) and out["cka_hi"] == 1.0
    # a rotated, rescaled copy is the same representation
    assert jackknife(_streamed(x, 3.0 * x @ synthetic.rotation(x.shape[1]), ids))["cka"] == pytest.approx(1.0, abs=1e-12)


def test_jackknife_equals_the_brute_force_delete_one_block_jackknife():
    x, y, ids = _pair(seed=3)
    out = jackknife(_streamed(x, y, ids))
    left = np.array([direct(x[ids != b], y[ids != b]) for b in range(8)])
    se = np.sqrt(7 / 8 * np.sum((left - left.mean()) ** 2))
    assert out["cka_se"] == pytest.approx(se, rel=1e-9)
    assert out["cka_blocks"] == 8
    assert out["cka_lo"] < out["cka"] < out["cka_hi"]
    from scipy.stats import t

    assert out["cka_hi"] - out["cka"] == pytest.approx(min(1 - out["cka"], t.ppf(0.975, 7) * se), rel=1e-9)


def test_unrelated_representations_score_low_and_related_ones_high():
    r = np.random.default_rng(5)
    x = r.standard_normal((4000, 8))
    ids = r.integers(0, 8, 4000)
    assert jackknife(_streamed(x, r.standard_normal((4000, 8)), ids, chunk=500))["cka"] < 0.02
    assert jackknife(_streamed(x, x + 0.1 * r.standard_normal((4000, 8)), ids, chunk=500))["cka"] > 0.95


def test_merging_empty_blocks_and_single_blocks():
    x, y, _ = _pair(seed=6)
    one = CrossStats.from_rows(x, y)
    assert linear_cka(merge([CrossStats.empty(12, 9), one])) == pytest.approx(direct(x, y), rel=1e-11)
    out = jackknife([one, CrossStats.empty(12, 9)])
    assert out["cka"] == pytest.approx(direct(x, y), rel=1e-11) and np.isnan(out["cka_se"]) and np.isnan(out["cka_lo"])


def test_a_token_subsample_equals_the_direct_formula_on_its_tokens_and_keeps_sequence_blocks():
    """The seeded subsample (``cka_tokens``) draws tokens; each keeps its sequence's block (s mod blocks), so the
    jackknife still deletes whole sequence blocks: on the subsample, the direct formula and the brute-force one."""
    x, y, _ = _pair(n=600, seed=7)
    seq = np.repeat(np.arange(40), 15)  # 40 sequences of 15 tokens
    sub = np.sort(np.random.default_rng([0, 11]).choice(600, size=250, replace=False))
    ids = seq[sub] % 8
    out = jackknife(_streamed(x[sub], y[sub], ids))
    assert out["cka"] == pytest.approx(direct(x[sub], y[sub]), rel=1e-11)
    assert abs(out["cka"] - direct(x, y)) > 1e-6  # the subsample, not every token
    left = np.array([direct(x[sub][ids != b], y[sub][ids != b]) for b in range(8)])
    assert out["cka_se"] == pytest.approx(np.sqrt(7 / 8 * np.sum((left - left.mean()) ** 2)), rel=1e-9)
    # the reference's per-block moments, formed once, serve every pair
    order, bounds = grouped(ids, 8)
    ref = side(x[sub][order], bounds)
    for yy in (y, 2.0 * x[:, :5] - 1.0):
        acc = CrossGramAccumulator(12, yy.shape[1], 8).add(paired(ref, yy[sub][order], bounds))
        assert linear_cka(merge(acc.blocks)) == pytest.approx(direct(x[sub], yy[sub]), rel=1e-11)
