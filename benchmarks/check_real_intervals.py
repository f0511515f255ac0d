"""On a real model's layers: the SE of a that SPINAL's intervals use (first-order block-bootstrap replicates,
analyze/influence.py, times the calibration's c where N ≤ 8·d, analyze/calibration.py) against an exact
delete-one-block jackknife (one float64 eigensolve per left-out block, no duplicated tokens), same 16 blocks, same
fit window; and whether a lies inside its own 95 % interval.

    .venv/bin/python benchmarks/check_real_intervals.py [STORE]   # default: the SmolLM2 audit's base store
"""
import numpy as np, sys
from spinal.store import Store
from spinal.analyze.layer_spectrum import accumulate
from spinal.analyze import calibration
from spinal.analyze.influence import eigen, bootstrap_weights
from spinal.analyze.moments import resample
from spinal.analyze.spectrum import fit_gram, fit_replicates, replicate_se, t_interval
from threadpoolctl import threadpool_limits
threadpool_limits(2)
s = Store.open(sys.argv[1] if len(sys.argv) > 1 else "out/smollm2-dpo/stores/base.zarr")
s_n = None
print("layer  a       SE first-order  c      SE calibrated  SE jackknife (exact)  first-order/jk  calibrated/jk  "
      "SE jackknife (first-order)  a inside")
for layer in [2, 8, 15, 22, 29]:
    res = accumulate(s, layer, 16)
    fit = fit_gram(res, storage_dtype=s.dtype)
    eig = eigen(res)
    sh = eig.shares(res, fit.k_hi)
    c = calibration.se_scale(res, eig.eigenvalues, fit, np.random.default_rng(11))
    g = int((res.block_sizes > 0).sum())
    first = fit_replicates(bootstrap_weights(res, np.random.default_rng(7), 1000) @ sh, fit)[0]
    se_first = replicate_se(first, g)
    filled = np.flatnonzero(res.block_sizes > 0)
    jk = np.array([fit_replicates(resample(res, np.setdiff1d(filled, [b])).eigenvalues()[None, : fit.k_hi], fit)[0][0]
                   for b in filled])
    se_jk = np.sqrt((g - 1) / g * ((jk - jk.mean()) ** 2).sum())
    w = np.ones((g, res.n_blocks)); w[:, ~np.isin(np.arange(res.n_blocks), filled)] = 0
    for i, b in enumerate(filled): w[i, b] = 0
    jk1 = fit_replicates(w @ sh, fit)[0]
    se_jk1 = np.sqrt((g - 1) / g * ((jk1 - jk1.mean()) ** 2).sum())
    lo, hi = t_interval(fit.a_wls, calibration.calibrate(first, fit.a_wls, c), g)
    s_n = (res.n, res.dim)
    print(f"{layer:5d}  {fit.a_wls:.4f}  {se_first:.5f}         {c:.3f}  {c * se_first:.5f}        {se_jk:.5f}"
          f"               {se_first / se_jk:.3f}           {c * se_first / se_jk:.3f}          {se_jk1:.5f}"
          f"                     {'yes' if lo < fit.a_wls < hi else 'NO'}")
print(f"N = {s_n[0]:,} tokens, d = {s_n[1]}: N = {s_n[0] / s_n[1]:.1f}·d, calibrated: {calibration.needed(*s_n)}")
