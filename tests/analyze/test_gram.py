"""Streaming float64 moments equal the one-shot float64 formulas, in both storage modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinal.analyze.gram import (
    GramAccumulator,
    GramResult,
    GramStats,
    bootstrap_eigenvalues,
    draw_blocks,
    resample,
)


def _hard_matrix(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(token, dim) data with a common offset 1e3× the spread and one coordinate 1e4× the others."""
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    x += 1e3 * rng.standard_normal(d)  # large common offset
    x[:, 3] = 1e4 * (5.0 + rng.standard_normal(n))  # massive coordinate
    return x


def _one_shot(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    xc = x - mean
    return mean, xc.T @ xc


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
    total = acc.result().total
    mean, scatter = _one_shot(x)
    assert total.n == 3000
    np.testing.assert_allclose(total.mean, mean, rtol=1e-13)
    _assert_scatter_close(total.scatter, scatter, rtol=1e-11)


def test_naive_uncentered_formula_loses_digits_chan_keeps():
    """The reason for per-chunk centering: G − s sᵀ/N cancels catastrophically under an offset."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 10)) + 1e6  # unit spread on an offset of 1e6
    _, ref = _one_shot(x)
    naive = x.T @ x - np.outer(x.sum(0), x.sum(0)) / x.shape[0]
    acc = _stream(x, np.zeros(2000, dtype=int), [500] * 4, dim=10, blocks=1)
    err_naive = np.abs(naive - ref).max() / np.abs(ref).max()
    err_chan = np.abs(acc.result().total.scatter - ref).max() / np.abs(ref).max()
    assert err_naive > 1e-3  # G ≈ 2e15 carries ~0.5 absolute rounding; the true entries are ~2e3
    assert err_chan < 1e-9  # the input itself is only known to eps·1e6 ≈ 1e-10 of its spread


def test_per_block_stats_equal_each_blocks_rows():
    rng = np.random.default_rng(2)
    x = _hard_matrix(rng, 600, 20)
    ids = rng.integers(0, 4, size=600)  # blocks interleaved inside chunks
    res = _stream(x, ids, [100, 250, 250], dim=20, blocks=4).result()
    for b, stats in enumerate(res.blocks):
        mean, scatter = _one_shot(x[ids == b])
        assert stats.n == (ids == b).sum()
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-13)
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-11)


def test_merge_of_two_accumulators_equals_one():
    rng = np.random.default_rng(3)
    x = _hard_matrix(rng, 900, 30)
    ids = np.repeat(np.arange(6), 150)
    one = _stream(x, ids, [450, 450], dim=30, blocks=6).result()
    left = _stream(x[:420], ids[:420], [20, 400], dim=30, blocks=6)  # left half switched to scatter
    right = _stream(x[420:], ids[420:], [10, 10, 460], dim=30, blocks=6)
    merged = left.merge(right).result()
    assert merged.n == one.n == 900
    for got, ref in zip(merged.blocks, one.blocks):
        assert got.n == ref.n
        np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-13)
        _assert_scatter_close(got.scatter, ref.scatter, rtol=1e-11)


@pytest.mark.parametrize("flush_rows", [1, 7, 64])
@pytest.mark.parametrize("layout", ["runs", "interleaved"])
def test_queues_flushed_many_times_equal_one_shot_per_block(flush_rows, layout):
    """Many Chan merges per block (short queues), ids in runs of a sequence or scattered token by token."""
    rng = np.random.default_rng(12)
    x = _hard_matrix(rng, 1300, 24)
    ids = np.arange(1300) // 13 % 5 if layout == "runs" else rng.integers(0, 5, size=1300)
    acc = _stream(x, ids, [30, 170, 400, 700], dim=24, blocks=5, flush_rows=flush_rows)
    left = _stream(x[:500], ids[:500], [500], dim=24, blocks=5, flush_rows=flush_rows)
    right = _stream(x[500:], ids[500:], [350, 450], dim=24, blocks=5, flush_rows=flush_rows)
    for res in (acc.result(), left.merge(right).result()):
        for b, stats in enumerate(res.blocks):
            mean, scatter = _one_shot(x[ids == b])
            assert stats.n == (ids == b).sum()
            np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
            _assert_scatter_close(stats.scatter, scatter, rtol=1e-10)
            np.testing.assert_array_equal(stats.scatter, stats.scatter.T)  # mirrored exactly
        mean, scatter = _one_shot(x)
        _assert_scatter_close(res.total.scatter, scatter, rtol=1e-10)


def test_wide_block_scatters_are_mirrored_across_every_tile():
    """dim 300 spans three 128-wide tiles of the upper → full mirroring."""
    rng = np.random.default_rng(13)
    x = _hard_matrix(rng, 700, 300)
    ids = np.arange(700) // 50 % 2
    res = _stream(x, ids, [350, 350], dim=300, blocks=2).result()
    for b, stats in enumerate(res.blocks):
        _, scatter = _one_shot(x[ids == b])
        _assert_scatter_close(stats.scatter, scatter, rtol=1e-10)
        np.testing.assert_array_equal(stats.scatter, stats.scatter.T)


def test_finish_hands_over_the_same_result_and_spends_the_accumulator():
    rng = np.random.default_rng(14)
    x = _hard_matrix(rng, 400, 150)
    ids = np.arange(400) // 20 % 4
    acc = _stream(x, ids, [200, 200], dim=150, blocks=4)
    copied = acc.result()
    handed = acc.finish()
    for a, b in zip(copied.blocks, handed.blocks):
        assert a.n == b.n
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.scatter, b.scatter)
    with pytest.raises(ValueError, match="finished"):
        acc.update(x[:10], ids[:10])
    with pytest.raises(ValueError, match="finished"):
        acc.result()
    with pytest.raises(ValueError, match="finished"):
        _stream(x, ids, [400], dim=150, blocks=4).merge(acc)


def test_merge_of_kept_rows_accumulators():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 50))
    ids = np.arange(30) % 3
    a = _stream(x[:12], ids[:12], [12], dim=50, blocks=3)
    b = _stream(x[12:], ids[12:], [18], dim=50, blocks=3)
    merged = a.merge(b)
    assert merged.keeps_rows and merged.n == 30
    np.testing.assert_array_equal(merged.result().rows, x)


def test_kept_rows_eigenvalues_equal_svd_of_centered_matrix():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 100)) * np.geomspace(1, 1e-2, 100) + 3.0  # n < d
    acc = _stream(x, np.arange(40) % 4, [15, 25], dim=100, blocks=4)
    assert acc.keeps_rows
    res = acc.result()
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
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
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(acc.result().eigenvalues(), sv**2, rtol=1e-9)


def test_raw_gram_and_mean_squares():
    rng = np.random.default_rng(7)
    x = _hard_matrix(rng, 300, 12)
    total = _stream(x, np.zeros(300, dtype=int), [300], dim=12, blocks=1).result().total
    np.testing.assert_allclose(total.raw_gram, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(total.column_mean_square, (x**2).mean(0), rtol=1e-12)
    assert total.mean_square == pytest.approx((x**2).mean(), rel=1e-12)
    rows = GramResult(12, 1, rows=x[:10], row_blocks=np.zeros(10, dtype=np.int64))
    assert rows.mean_square == pytest.approx((x[:10] ** 2).mean(), rel=1e-12)


def test_bf16_chunks_are_upcast_exactly():
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((200, 16))).to(torch.bfloat16)
    got = _stream(x, np.zeros(200, dtype=int), [64, 136], dim=16, blocks=1).result().total
    ref = GramStats.from_rows(x.to(torch.float64).numpy())
    np.testing.assert_allclose(got.scatter, ref.scatter, rtol=1e-12, atol=1e-12)


def test_resample_equals_stats_of_the_concatenated_blocks():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 10)) + 2.0
    ids = np.repeat(np.arange(4), 100)
    res = _stream(x, ids, [400], dim=10, blocks=4).result()
    choice = np.array([0, 0, 2, 3])
    ref = GramStats.from_rows(np.concatenate([x[ids == b] for b in choice]))
    got = resample(res, choice).total
    assert got.n == 400
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-13)
    _assert_scatter_close(got.scatter, ref.scatter, rtol=1e-11)
    np.testing.assert_allclose(resample(res, np.arange(4)).eigenvalues(), res.eigenvalues(), rtol=1e-10)


def test_resample_of_kept_rows_and_empty_blocks():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((20, 64))
    ids = np.array([0] * 8 + [2] * 12)  # blocks 1 and 3 empty
    res = _stream(x, ids, [20], dim=64, blocks=4).result()
    for _ in range(20):
        assert set(draw_blocks(res, rng)) <= {0, 2}
    got = resample(res, np.array([2, 0, 2]))
    ref = np.concatenate([x[8:], x[:8], x[8:]])
    sv = np.linalg.svd(ref - ref.mean(0), compute_uv=False)
    np.testing.assert_allclose(got.eigenvalues(), sv[: ref.shape[0] - 1] ** 2, rtol=1e-9, atol=1e-9 * sv[0] ** 2)
    assert bootstrap_eigenvalues(res, rng).shape[0] <= 31


def test_bad_input_is_refused():
    acc = GramAccumulator(4, blocks=2)
    with pytest.raises(ValueError, match="outside"):
        acc.update(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(np.full((2, 4), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="chunk"):
        acc.update(np.zeros((2, 5)), np.array([0, 1]))
    single = GramAccumulator(4, blocks=2).update(np.ones((3, 4)), np.zeros(3, dtype=int)).result()
    with pytest.raises(ValueError, match="non-empty"):
        draw_blocks(single, np.random.default_rng(0))


def test_merge_all_equals_folded_pairwise_merges_and_one_shot():
    from functools import reduce

    from spinal.analyze.gram import GramStats, merge_all

    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((n, 7)) * [1, 1, 1, 1, 1, 1, 1e4] + 300.0 for n in (3, 40, 1, 17, 9)]
    stats = [GramStats.from_rows(p) for p in parts] + [GramStats.empty(7)]
    folded = reduce(GramStats.merge, stats, GramStats.empty(7))
    allat = merge_all(stats, 7)
    one = GramStats.from_rows(np.concatenate(parts))
    assert allat.n == folded.n == one.n
    np.testing.assert_allclose(allat.mean, one.mean, rtol=1e-12)
    np.testing.assert_allclose(allat.scatter, one.scatter, rtol=1e-10, atol=1e-9 * np.abs(one.scatter).max())
    np.testing.assert_allclose(allat.scatter, folded.scatter, rtol=1e-10, atol=1e-9 * np.abs(one.scatter).max())
