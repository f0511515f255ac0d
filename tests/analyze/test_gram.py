"""Streaming float64 moments equal the one-shot float64 formulas, in both storage modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from references import centered_singular_values, one_shot_moments
from spinal.analyze.contraction.gram import GramAccumulator
from spinal.analyze.contraction.moments import GramResult, GramStats, draw_blocks, merge_all, resample


def _hard_matrix(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(token, dim) data with a common offset 1e3× the spread and one coordinate 1e4× the others."""
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    x += 1e3 * rng.standard_normal(d)  # large common offset
    x[:, 3] = 1e4 * (5.0 + rng.standard_normal(n))  # massive coordinate
    return x


def _assert_scatter_close(got: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Entry-wise on the correlation scale |ΔM_ij| ≤ rtol·√(M_ii M_jj), so small coordinates count."""
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    assert (np.abs(got - ref) <= rtol * scale).all(), np.abs(got - ref).max() / scale.max()


def _stream(x: np.ndarray, ids: np.ndarray, sizes: list[int], dim: int, blocks: int,
            flush_rows: int | None = None) -> GramAccumulator:
    acc = GramAccumulator(dim, blocks, flush_rows=flush_rows)
    start = 0
    for size in sizes:
        acc.update(x[start : start + size], ids[start : start + size])
        start += size
    assert start == x.shape[0]
    return acc


def test_chan_streaming_equals_one_shot_with_offset_and_massive_coordinate():
    rng = np.random.default_rng(0)
    x = _hard_matrix(rng, 3000, 40)
    ids = np.repeat(np.arange(8), 375)  # whole "sequences" per block
    acc = _stream(x, ids, [1, 7, 300, 1000, 1692], dim=40, blocks=8)
    total = acc.finish().total
    mean, scatter = one_shot_moments(x)
    assert total.n == 3000
    np.testing.assert_allclose(total.mean, mean, rtol=1e-13)
    _assert_scatter_close(total.scatter, scatter, rtol=1e-11)


def test_naive_uncentered_formula_loses_digits_chan_keeps():
    """The reason for per-chunk centering: G − s sᵀ/N cancels catastrophically under an offset."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 10)) + 1e6  # unit spread on an offset of 1e6
    _, ref = one_shot_moments(x)
    naive = x.T @ x - np.outer(x.sum(0), x.sum(0)) / x.shape[0]
    acc = _stream(x, np.zeros(2000, dtype=int), [500] * 4, dim=10, blocks=1)
    err_naive = np.abs(naive - ref).max() / np.abs(ref).max()
    err_chan = np.abs(acc.finish().total.scatter - ref).max() / np.abs(ref).max()
    assert err_naive > 1e-3  # G ≈ 2e15 carries ~0.5 absolute rounding; the true entries are ~2e3
    assert err_chan < 1e-9  # the input itself is only known to eps·1e6 ≈ 1e-10 of its spread


def test_per_block_stats_equal_each_blocks_rows():
    rng = np.random.default_rng(2)
    x = _hard_matrix(rng, 600, 20)
    ids = rng.integers(0, 4, size=600)  # blocks interleaved inside chunks
    res = _stream(x, ids, [100, 250, 250], dim=20, blocks=4).finish()
    for b, stats in enumerate(res.blocks):
        mean, scatter = one_shot_moments(x[ids == b])
        assert stats.n == (ids == b).sum()
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-13)
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-11)


@pytest.mark.parametrize("flush_rows", [1, 7, 64])
@pytest.mark.parametrize("layout", ["runs", "interleaved"])
def test_queues_flushed_many_times_equal_one_shot_per_block(flush_rows, layout):
    """Many Chan merges per block (short queues), ids in runs of a sequence or scattered token by token."""
    rng = np.random.default_rng(12)
    x = _hard_matrix(rng, 1300, 24)
    ids = np.arange(1300) // 13 % 5 if layout == "runs" else rng.integers(0, 5, size=1300)
    res = _stream(x, ids, [30, 170, 400, 700], dim=24, blocks=5, flush_rows=flush_rows).finish()
    for b, stats in enumerate(res.blocks):
        mean, scatter = one_shot_moments(x[ids == b])
        assert stats.n == (ids == b).sum()
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-10)
        np.testing.assert_array_equal(stats.scatter, stats.scatter.T)  # mirrored exactly
    mean, scatter = one_shot_moments(x)
    _assert_scatter_close(res.total.scatter, scatter, rtol=1e-10)


def test_wide_block_scatters_are_the_upper_triangle_mirrored_exactly():
    """The SYRK fills only the upper triangle; finish() copies it below the diagonal, bit for bit."""
    rng = np.random.default_rng(13)
    x = _hard_matrix(rng, 700, 300)
    ids = np.arange(700) // 50 % 2
    res = _stream(x, ids, [350, 350], dim=300, blocks=2).finish()
    for b, stats in enumerate(res.blocks):
        _, scatter = one_shot_moments(x[ids == b])
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-10)
        np.testing.assert_array_equal(stats.scatter, stats.scatter.T)


def test_finish_hands_over_the_result_and_spends_the_accumulator():
    rng = np.random.default_rng(14)
    x = _hard_matrix(rng, 400, 150)
    ids = np.arange(400) // 20 % 4
    acc = _stream(x, ids, [200, 200], dim=150, blocks=4)
    handed = acc.finish()
    for b, stats in enumerate(handed.blocks):
        mean, scatter = one_shot_moments(x[ids == b])
        assert stats.n == 100
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-10)
    with pytest.raises(ValueError, match="finished"):
        acc.update(x[:10], ids[:10])
    with pytest.raises(ValueError, match="finished"):
        acc.finish()


def test_kept_rows_eigenvalues_equal_svd_of_centered_matrix():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 100)) * np.geomspace(1, 1e-2, 100) + 3.0  # n < d
    acc = _stream(x, np.arange(40) % 4, [15, 25], dim=100, blocks=4)
    assert acc.keeps_rows
    res = acc.finish()
    np.testing.assert_array_equal(res.rows, x)  # the rows themselves, in update order
    sv = centered_singular_values(x)
    ev = res.eigenvalues(centered=True)
    assert ev.shape == (39,)  # rank min(n − 1, d)
    np.testing.assert_allclose(ev, sv[:39] ** 2, rtol=1e-10)
    raw = res.eigenvalues(centered=False)
    assert raw.shape == (40,)
    np.testing.assert_allclose(raw, np.linalg.svd(x, compute_uv=False) ** 2, rtol=1e-10)


def test_switch_from_rows_to_scatter_keeps_the_spectrum():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((90, 50)) * np.geomspace(1, 1e-2, 50)
    acc = _stream(x, np.arange(90) % 3, [20, 20, 50], dim=50, blocks=3)
    assert not acc.keeps_rows
    np.testing.assert_allclose(acc.finish().eigenvalues(), centered_singular_values(x) ** 2, rtol=1e-9)


def test_raw_gram_and_column_mean_squares():
    rng = np.random.default_rng(7)
    x = _hard_matrix(rng, 300, 12)
    total = _stream(x, np.zeros(300, dtype=int), [300], dim=12, blocks=1).finish().total
    np.testing.assert_allclose(total.raw_gram, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(total.column_mean_square, (x**2).mean(0), rtol=1e-12)
    rows = GramResult(12, 1, rows=x[:10], row_blocks=np.zeros(10, dtype=np.int64))
    np.testing.assert_allclose(rows.column_mean_square, (x[:10] ** 2).mean(0), rtol=1e-12)


def test_bf16_chunks_are_upcast_exactly():
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((200, 16))).to(torch.bfloat16)
    got = _stream(x, np.zeros(200, dtype=int), [64, 136], dim=16, blocks=1).finish().total
    _, ref = one_shot_moments(x.to(torch.float64).numpy())
    np.testing.assert_allclose(got.scatter, ref, rtol=1e-12, atol=1e-12)


def test_resample_equals_stats_of_the_concatenated_blocks():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 10)) + 2.0
    ids = np.repeat(np.arange(4), 100)
    res = _stream(x, ids, [400], dim=10, blocks=4).finish()
    choice = np.array([0, 0, 2, 3])
    mean, scatter = one_shot_moments(np.concatenate([x[ids == b] for b in choice]))
    got = resample(res, choice).total
    assert got.n == 400
    np.testing.assert_allclose(got.mean, mean, rtol=1e-13)
    _assert_scatter_close(got.scatter, scatter, rtol=1e-11)
    np.testing.assert_allclose(resample(res, np.arange(4)).eigenvalues(), res.eigenvalues(), rtol=1e-10)


def test_resample_of_kept_rows_and_empty_blocks():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((20, 64))
    ids = np.array([0] * 8 + [2] * 12)  # blocks 1 and 3 empty
    res = _stream(x, ids, [20], dim=64, blocks=4).finish()
    assert res.rows is not None
    for _ in range(20):
        assert set(draw_blocks(res, rng)) <= {0, 2}
    for choice in (np.array([2, 0, 2]), draw_blocks(res, rng)):  # the second as the bootstrap draws it
        ref = np.concatenate([x[ids == b] for b in choice])
        sv = centered_singular_values(ref)
        np.testing.assert_allclose(resample(res, choice).eigenvalues(), sv[: ref.shape[0] - 1] ** 2,
                                   rtol=1e-9, atol=1e-9 * sv[0] ** 2)


def test_bad_input_is_refused():
    acc = GramAccumulator(4, blocks=2)
    with pytest.raises(ValueError, match="outside"):
        acc.update(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(np.full((2, 4), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="chunk"):
        acc.update(np.zeros((2, 5)), np.array([0, 1]))
    single = GramAccumulator(4, blocks=2).update(np.ones((3, 4)), np.zeros(3, dtype=int)).finish()
    with pytest.raises(ValueError, match="non-empty"):
        draw_blocks(single, np.random.default_rng(0))


def test_merge_all_equals_one_shot_with_repeated_and_empty_groups():
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((n, 7)) * [1, 1, 1, 1, 1, 1, 1e4] + 300.0 for n in (3, 40, 1, 17, 9)]
    stats = [GramStats.from_rows(p) for p in parts]
    listed = stats + [stats[1], stats[1], GramStats.empty(7)]  # as a bootstrap draw lists them: group 1 thrice
    allat = merge_all(listed, 7)
    mean, scatter = one_shot_moments(np.concatenate(parts + [parts[1], parts[1]]))
    assert allat.n == 3 + 3 * 40 + 1 + 17 + 9
    np.testing.assert_allclose(allat.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(allat.scatter, scatter, rtol=1e-10, atol=1e-9 * np.abs(scatter).max())
    assert merge_all([GramStats.empty(7)], 7).n == 0
