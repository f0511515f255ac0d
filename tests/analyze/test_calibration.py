"""The calibrated bootstrap SE of a (analyze/calibration.py): where N ≤ 8·d it brings the first-order interval's
coverage back to nominal, above that it changes nothing, and a checkpoint against itself still differs by 0."""

import numpy as np
import pytest

from spinal.analyze import calibration, synthetic
from spinal.analyze.layer_spectrum import spectrum_of
from spinal.analyze.spectrum import t_interval
from spinal.config import AnalyzeConfig
from spinal.errors import InputError


def _spec(res, seed, sims, n_boot=200):
    return spectrum_of(res, 0, storage_dtype="float32", n_boot=n_boot, null_splits=0, seed=seed, window=None,
                       calibration_sims=sims)


def test_calibration_brings_small_n_coverage_back_to_nominal():
    """d = 32, N = 2·d, 200 seeded datasets: the first-order interval over-covers E[â] (99.5 % measured: it is too
    wide), the calibrated one covers it 90–98 %, and â stays inside its interval."""
    spec = synthetic.Layer(32, 64, 0.8, tokens_per_sequence=2)
    q, rng = synthetic.rotation(spec.dim), np.random.default_rng(0)
    points, calibrated, first_order, scales = [], [], [], []
    for i in range(200):
        h, seq, _ = synthetic.draw(spec, rng, q)
        s = _spec(synthetic.moments(h, seq), i, sims=12)
        a = s.centered.a_wls
        points.append(a)
        scales.append(s.se_scale)
        calibrated.append(t_interval(a, s.boot, s.blocks))
        first_order.append(t_interval(a, a + (s.boot - a) / s.se_scale, s.blocks))  # boot unscaled
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
    assert on.se_scale == 1.0
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
    raw = _spec(res, 7, sims=0).boot
    assert np.std(s1.boot) == pytest.approx(c * np.std(raw), rel=1e-9)
    assert np.mean(s1.boot) - s1.centered.a_wls == pytest.approx(c * (np.mean(raw) - s1.centered.a_wls), abs=1e-12)


def test_negative_calibration_sims_are_refused():
    with pytest.raises(InputError, match="calibration_sims=-1; must be ≥ 0"):
        AnalyzeConfig(store="s.zarr", out="o", calibration_sims=-1)
