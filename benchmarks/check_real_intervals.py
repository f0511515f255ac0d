"""On a real model's layers: the SE of a that SPINAL's intervals use against its parts, and whether a lies inside
its own 95 % interval. Where N ≤ 8·d the interval's SE is κ·SE_jackknife (analyze/contraction/calibration.py): the exact
delete-one-block jackknife (one float64 eigensolve per left-out block, no duplicated tokens) times κ, simulated per
layer and pooled over the layers shown; the first-order bootstrap SE (analyze/contraction/influence.py) is printed beside it.
Whether the SE is right is measured over disjoint real subsamples in benchmarks/check_real_coverage.py.

    .venv/bin/python benchmarks/check_real_intervals.py [STORE]   # default: the SmolLM2 audit's base store
"""
import sys

from threadpoolctl import threadpool_limits

from spinal.analyze.contraction import calibration
from spinal.analyze.contraction.layer_spectrum import accumulate, pool, spectrum_of
from spinal.analyze.contraction.intervals import replicate_se, t_interval
from spinal.store.contract import Store

threadpool_limits(2)
s = Store.open(sys.argv[1] if len(sys.argv) > 1 else "out/smollm2-dpo/stores/base.zarr")
layers = [2, 8, 15, 22, 29]
sims = calibration.per_layer(calibration.SIMS, len(layers))  # the trace's budget, over these layers
spectra = pool([spectrum_of(accumulate(s, layer, 16), layer, storage_dtype=s.dtype, n_boot=1000, null_splits=0,
                            seed=0, window=None, calibration_sims=sims) for layer in layers])
print("layer  a       SE first-order  SE jackknife  κ (own)  κ (pooled)  SE interval  first-order/interval  a inside")
for x in spectra:
    a = x.centered.a_wls
    lo, hi = t_interval(a, x.boot, x.blocks)
    print(f"{x.layer:5d}  {a:.4f}  {x.se_first:.5f}         {x.se_jackknife:.5f}       {x.kappa_layer:.3f}    "
          f"{x.kappa:.3f}       {replicate_se(x.boot, x.blocks):.5f}      {x.se_first / replicate_se(x.boot, x.blocks):.3f}"
          f"                 {'yes' if lo < a < hi else 'NO'}")
n, d = spectra[0].n_tokens, int(s.meta["dim"])
print(f"N = {n:,} tokens, d = {d}: N = {n / d:.1f}·d, calibrated: {calibration.needed(n, d)}")
