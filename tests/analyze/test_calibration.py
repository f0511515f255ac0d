"""The calibrated bootstrap SE of a (analyze/contraction/calibration.py): where N ≤ 8·d it brings the first-order interval's
coverage back to nominal, above that it changes nothing, and a checkpoint against itself still differs by 0."""

import numpy as np
import pytest

from spinal.analyze.contraction import calibration

import synthetic
from spinal.analyze.contraction.layer_spectrum import pool, spectrum_of
from spinal.analyze.contraction.intervals import replicate_se, t_interval
from spinal.analyze.contraction.slopes import fit_replicates
from spinal.analyze.contraction.spectrum import fit_gram
from spinal.config import AnalyzeConfig
from spinal.errors import InputError


def _spec(res, seed, sims, n_boot=200, layer=0):
    return spectrum_of(res, layer, storage_dtype="float32", n_boot=n_boot, null_splits=0, seed=seed, window=None,
                       calibration_sims=sims)


def test_calibration_brings_small_n_coverage_back_to_nominal():
    """d = 32, N = 2·d, 200 seeded datasets: the first-order interval over-covers E[â] (99.5 % measured: it is too
    wide), the calibrated one covers it 90–98 %, and â stays inside its interval."""
    spec = synthetic.Layer(32, 64, 0.8, tokens_per_sequence=2)
    q, rng = synthetic.rotation(spec.dim), np.random.default_rng(0)
    points, calibrated, first_order, scales = [], [], [], []
    for i in range(200):
        h, seq, _ = synthetic.draw(spec, rng, q)
        s = _spec(synthetic.moments(h, seq), i, sims=8)
        a = s.centered.a_wls
        points.append(a)
        scales.append(s.se_scale)
        calibrated.append(t_interval(a, s.boot, s.blocks))
        first_order.append(t_interval(a, s.first_order, s.blocks))
    points, calibrated, first_order = map(np.array, (points, calibrated, first_order))
    truth = points.mean()
    cover = lambda iv: np.mean((iv[:, 0] <= truth) & (truth <= iv[:, 1]))  # noqa: E731
    assert cover(first_order) > 0.98, cover(first_order)
    assert 0.90 <= cover(calibrated) <= 0.98, cover(calibrated)
    assert np.median(scales) < 0.95  # the interval narrowed because c < 1, not by chance
    assert np.all((calibrated[:, 0] < points) & (points < calibrated[:, 1]))


def test_above_eight_d_tokens_nothing_is_simulated_or_scaled():
    spec = synthetic.Layer(32, 9 * 32, 0.8)
    h, seq, _ = synthetic.draw(spec, np.random.default_rng(3), synthetic.rotation(32))
    res = synthetic.moments(h, seq)
    assert not calibration.needed(res.n, res.dim)
    on, off = _spec(res, 0, sims=24), _spec(res, 0, sims=0)
    assert on.se_scale == 1.0 and on.leave_one_out.size == 0  # no jackknife either: a trace keeps none
    np.testing.assert_array_equal(on.boot, off.boot)


def test_a_checkpoint_against_itself_still_differs_by_exactly_zero():
    """Calibration is seeded like the replicates, so one store analyzed twice gets the same c and the same scaled
    replicates: its paired Δa replicates are all 0 (and c is a real correction here, not 1)."""
    spec = synthetic.Layer(32, 96, 0.8, tokens_per_sequence=3)
    h, seq, _ = synthetic.draw(spec, np.random.default_rng(4), synthetic.rotation(32))
    res = synthetic.moments(h, seq)
    s1, s2 = _spec(res, 7, sims=8), _spec(res, 7, sims=8)
    assert s1.se_scale != 1.0 and s1.se_scale == s2.se_scale
    assert np.all(s2.boot - s1.boot == 0.0)
    c = s1.se_scale  # the scaled replicates' SD is c times the first-order one, about the same centre
    from spinal.analyze.contraction.influence import eigen
    from spinal.analyze.contraction.layer_spectrum import bootstrap_a
    from spinal.analyze.seeds import Purpose, rng
    fit = s1.centered
    raw = bootstrap_a(res, eigen(res).shares(res, fit.k_hi), fit, rng(7, Purpose.BOOTSTRAP), 200)[:, 0]
    assert s1.se_first == pytest.approx(replicate_se(raw, s1.blocks), rel=1e-12)
    assert np.std(s1.boot) == pytest.approx(c * np.std(raw), rel=1e-9)
    assert np.mean(s1.boot) - s1.centered.a_wls == pytest.approx(c * (np.mean(raw) - s1.centered.a_wls), abs=1e-12)


def test_the_jackknife_se_matches_float64_svds_of_the_left_out_rows():
    """The exact jackknife against an independent reference: for each left-out block, a float64 SVD of the other
    blocks' centred rows, fitted in the same window."""
    spec = synthetic.Layer(32, 96, 0.7, tokens_per_sequence=3)
    h, seq, _ = synthetic.draw(spec, np.random.default_rng(8), synthetic.rotation(32))
    res = synthetic.moments(h, seq)
    fit = fit_gram(res, storage_dtype="float32")
    blocks = seq % 16
    left = []
    for b in range(16):
        x = h[blocks != b].astype(np.float64)
        sv = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
        left.append(fit_replicates((sv**2)[None, : fit.k_hi], fit)[0][0])
    left = np.array(left)
    ref = np.sqrt(15 / 16 * np.sum((left - left.mean()) ** 2))
    assert calibration.jackknife_se(res, fit) == pytest.approx(ref, rel=1e-8)


def test_each_layer_simulates_from_its_own_stream_and_the_trace_applies_the_pooled_kappa():
    """Six layers (a from 0.5 to 1.0, N = 2·d): each layer's κ comes from its own seeded stream (the same layer
    reproduces it, another layer's key does not); ``pool`` gives every layer κ = √(Σ(S−1)κ_ℓ²/Σ(S−1)), and its
    replicates' SE becomes exactly κ times its exact jackknife SE, about its own a."""
    rng, q = np.random.default_rng(5), synthetic.rotation(32)
    own = []
    for layer, a in enumerate(np.linspace(0.5, 1.0, 6)):
        h, seq, _ = synthetic.draw(synthetic.Layer(32, 64, a, tokens_per_sequence=2), rng, q)
        own.append(_spec(synthetic.moments(h, seq), 3, sims=8, layer=layer))
    again = _spec(synthetic.moments(h, seq), 3, sims=8, layer=5)
    elsewhere = _spec(synthetic.moments(h, seq), 3, sims=8, layer=6)
    assert again.simulated == own[5].simulated and elsewhere.simulated != own[5].simulated
    sims = [s.simulated for s in own]
    assert len({s.kappa for s in sims}) == 6  # independent draws, not one shared error
    df = np.array([s.count - 1 for s in sims])
    kappa = np.sqrt(np.sum(df * np.array([s.kappa for s in sims]) ** 2) / df.sum())
    for before, after in zip(own, pool(own)):
        assert after.kappa == pytest.approx(kappa, rel=1e-12) and after.kappa_layer == before.kappa
        assert replicate_se(after.boot, after.blocks) == pytest.approx(kappa * before.se_jackknife, rel=1e-9)
        assert np.mean(after.boot) - after.centered.a_wls == pytest.approx(
            after.se_scale / before.se_scale * (np.mean(before.boot) - before.centered.a_wls), abs=1e-12)
    alone = _spec(synthetic.moments(h, seq), 3, sims=0)  # no simulations: κ = 1, the jackknife's SE itself
    assert alone.kappa == 1.0 and alone.simulated is None
    assert replicate_se(alone.boot, alone.blocks) == pytest.approx(alone.se_jackknife, rel=1e-9)


def test_below_eight_d_tokens_traces_carry_one_pooled_kappa_and_compare_pairs_the_exact_jackknife(checkpoint,
                                                                                                  tmp_path):
    """End to end on captured stores of 12 short prompts (N ≤ 8·d), two checkpoints: every layer's interval is
    κ·se_jackknife wide (t quantile aside), with one pooled κ that lies between the layers' own; the trace keeps
    each layer's leave-one-out a (saved and loaded); the comparison's Δa interval is κ̄ times the paired jackknife
    of those values, the same blocks left out of both, and a trace against itself still differs by exactly 0."""
    from conftest import write_jsonl
    from scipy.stats import t as student
    from spinal.analyze.compare.paired import compare
    from spinal.analyze.trace import analyze
    from spinal.analyze.trace_format import Trace
    from spinal.capture import capture
    from spinal.config import CaptureConfig, CompareConfig
    rows = [{"id": f"q{i}", "prompt": f"Item {i}: say why {i * 5 % 11} matters."} for i in range(12)]
    prompts = str(write_jsonl(tmp_path / "p.jsonl", rows))
    traces = []
    for seed in (0, 1):
        out = str(tmp_path / f"s{seed}.zarr")
        capture(CaptureConfig(model=str(checkpoint("gpt2", seed)), prompts=prompts, out=out, unit_tokens=256))
        tr = analyze(AnalyzeConfig(store=out, out=str(tmp_path / f"t{seed}"), n_boot=40, null_splits=0,
                                   calibration_sims=6, workers=1), label=f"m{seed}")
        traces.append(Trace.load(tr.save(tmp_path / f"t{seed}")))
    base, other = traces
    t, g = base.table, base.meta["blocks_used"]
    assert calibration.needed(base.meta["n_tokens"], 64) and base.meta["trace_format"] >= 4
    assert base.meta["calibration_sims_per_layer"] == 2  # 6 spread over 4 layers: ⌈6/4⌉
    assert t["kappa"].nunique() == 1 and t["kappa_layer"].nunique() == len(t)
    assert t["kappa_layer"].min() < t["kappa"].iloc[0] < t["kappa_layer"].max()
    q = student.ppf(0.975, g - 1)
    np.testing.assert_allclose((t["a_hi"] - t["a_lo"]) / 2, q * t["kappa"] * t["se_jackknife"], rtol=1e-9)
    assert base.jackknife.shape == (len(t), g)  # one leave-one-out a per block (12 sequences: 12 blocks)
    np.testing.assert_allclose([calibration.spread(x) for x in base.jackknife], t["se_jackknife"], rtol=1e-12)
    pair = compare([base, other], CompareConfig(n_boot=40)).pairs[0].table
    kappa = np.sqrt((t["kappa"] ** 2 + other.table["kappa"] ** 2) / 2)
    paired_jk = np.array([calibration.spread(y - x) for x, y in zip(base.jackknife, other.jackknife)])
    np.testing.assert_allclose((pair["d_a_hi"] - pair["d_a_lo"]) / 2, q * kappa * paired_jk, rtol=1e-9)
    again = Trace(base.table, {**base.meta, "label": "again"}, base.boot, base.seq_L, base.spectra, base.jackknife)
    itself = compare([base, again], CompareConfig(n_boot=40)).pairs[0].table
    assert (itself["d_a"] == 0).all() and (itself["d_a_lo"] == 0).all() and (itself["d_a_hi"] == 0).all()


def test_negative_calibration_sims_are_refused():
    with pytest.raises(InputError, match="calibration_sims=-1; must be ≥ 0"):
        AnalyzeConfig(store="s.zarr", out="o", calibration_sims=-1)
