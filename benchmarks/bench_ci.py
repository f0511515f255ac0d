"""Intervals of a: their cost against the previous method, and their coverage on layers with a known spectrum, in one run.

    .venv/bin/python benchmarks/bench_ci.py [--dims 1024 2048] [--datasets 200] [--update-docs]

- Cost, one layer at each of ``--dims`` with N = 16·d: the float64 Gram pass that reads the data; SPINAL's spectrum + 95 % interval + null
  spread (``spectrum_of``: one ``eigh`` with vectors, one ``eigvalsh`` for the raw fit, first-order replicates);
  and the previous method (v0.1: an ``eigvalsh`` of an exactly resampled scatter per bootstrap replicate and per
  half of every null split, 2 + 200 + 2·8 = 218 solves), timed over ``--exact-calls`` of its replicates and scaled
  to 216 (said in the table).
- Coverage: over ``--datasets`` seeded synthetic layers per row (tests/analyze/synthetic.py: ≥ 32 sequences of ≤ 16 tokens with a
  shared component, σ_k ∝ k^-a; with and without a massive coordinate and bf16 rounding; N from d/2 to 32·d), how
  often the 95 % interval covers E[a] at that N (the Monte Carlo mean of the point estimates), and how often it
  covers the population a, calibrated (analyze/contraction/calibration.py, N ≤ 8·d: κ·exact jackknife) and first-order; the previous method's
  percentile interval beside it on the first ``--exact-datasets``.
- Paired coverage: two exchangeable checkpoints on one token stream (d = ``--paired-dim``, N from d/2 to 32·d), the
  second as steep or 0.1 steeper; how often the paired Δa interval covers E[Δa] (exactly 0 with no shift).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "analyze"))  # synthetic layers, shared with the tests
import synthetic  # noqa: E402
from common import machine, publish  # noqa: E402

from spinal.analyze.contraction import calibration  # noqa: E402
from spinal.analyze.contraction.layer_spectrum import Replicates, paired_replicates, spectrum_of  # noqa: E402
from spinal.analyze.contraction.moments import draw_blocks, resample  # noqa: E402
from spinal.analyze.contraction.intervals import t_interval  # noqa: E402
from spinal.analyze.contraction.spectrum import fit_gram  # noqa: E402

PREVIOUS_CALLS = 200 + 2 * 8  # v0.1's replicate solves besides the two fits: 200 bootstrap + 2 × 8 split halves


def side(s) -> Replicates:
    """A LayerSpectrum as a comparison pairs it: â, replicates, leave-one-out values, κ (as a Trace row holds them)."""
    return Replicates(s.centered.a_wls, s.boot, s.leave_one_out, s.kappa)


def previous_replicate(res, dtype, rng) -> float:
    """v0.1's bootstrap replicate: the scatter of blocks drawn with replacement, its own eigvalsh and window."""
    return fit_gram(resample(res, draw_blocks(res, rng)), storage_dtype=dtype, with_mle=False).a_wls


def cost(dim: int, tokens: int, exact_calls: int) -> dict:
    spec = synthetic.Layer(dim, tokens, 0.8, tokens_per_sequence=128)
    h, seq, _ = synthetic.draw(spec, np.random.default_rng(0), synthetic.rotation(dim))
    t = time.perf_counter()
    res = synthetic.moments(h, seq)
    gram_s = time.perf_counter() - t
    t = time.perf_counter()
    s = spectrum_of(res, 0, storage_dtype="float32", n_boot=1000, null_splits=8, seed=0, window=None)
    new_s = time.perf_counter() - t
    t = time.perf_counter()
    fit_gram(res, storage_dtype="float32")
    fit_gram(res, storage_dtype="float32", centered=False)
    fits_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    exact = [previous_replicate(res, "float32", rng) for _ in range(exact_calls)]
    per_call = (time.perf_counter() - t) / exact_calls
    prev_s = fits_s + PREVIOUS_CALLS * per_call
    lo, hi = t_interval(s.centered.a_wls, s.boot, s.blocks)
    return {"dim": dim, "tokens": tokens, "gram_s": gram_s, "spinal_s": new_s, "previous_fits_s": fits_s,
            "previous_per_replicate_s": per_call, "previous_s": prev_s, "exact_calls_timed": exact_calls,
            "speedup_analysis": prev_s / new_s, "speedup_with_gram": (gram_s + prev_s) / (gram_s + new_s),
            "previous_over_gram": prev_s / gram_s, "a": s.centered.a_wls, "ci": [lo, hi],
            "previous_replicates_mean_minus_a": float(np.mean(exact) - s.centered.a_wls)}


def coverage(spec: synthetic.Layer, datasets: int, exact_datasets: int, n_boot_exact: int, sims: int) -> dict:
    q, rng = synthetic.rotation(spec.dim), np.random.default_rng(0)
    points, ivals, first, scales, prev = [], [], [], [], []
    for i in range(datasets):
        h, seq, _ = synthetic.draw(spec, rng, q)
        res = synthetic.moments(h, seq)
        s = spectrum_of(res, 0, storage_dtype=spec.storage_dtype, n_boot=1000, null_splits=8, seed=i, window=None,
                        calibration_sims=sims)
        points.append(s.centered.a_wls)
        ivals.append(t_interval(s.centered.a_wls, s.boot, s.blocks))
        first.append(t_interval(s.centered.a_wls, s.first_order, s.blocks))
        scales.append(s.se_scale)
        if i < exact_datasets:
            r = np.array([previous_replicate(res, spec.storage_dtype, rng) for _ in range(n_boot_exact)])
            prev.append(np.percentile(r, [2.5, 97.5]) if np.isfinite(r).all() else [np.nan, np.nan])
    points, ivals, first, prev = np.array(points), np.array(ivals), np.array(first), np.array(prev).reshape(-1, 2)
    ok = np.isfinite(points) & np.isfinite(ivals).all(axis=1)
    scales = np.array(scales)[ok]
    truth = float(points[ok].mean())
    inside = lambda iv, x: (iv[:, 0] <= x) & (x <= iv[:, 1])  # noqa: E731
    p_ok = np.isfinite(prev).all(axis=1)
    return {"dim": spec.dim, "tokens": spec.tokens, "a": spec.a, "massive_bf16": spec.massive, "fitted": int(ok.sum()),
            "mean_a": truth, "sd_a": float(points[ok].std(ddof=1)),
            "median_width": float(np.median(np.diff(ivals[ok], axis=1))),
            "coverage_mean_a": float(inside(ivals[ok], truth).mean()),
            "coverage_population_a": float(inside(ivals[ok], spec.a).mean()),
            "first_order_coverage_mean_a": float(inside(first[ok], truth).mean()),
            "median_se_scale": float(np.median(scales)) if scales.size else float("nan"),
            "point_inside": float(inside(ivals[ok], points[ok]).mean()),
            "previous_coverage_mean_a": float(inside(prev[p_ok], truth).mean()) if p_ok.any() else float("nan"),
            "previous_point_inside": float(inside(prev[p_ok], points[: len(prev)][p_ok]).mean()) if p_ok.any()
            else float("nan"), "previous_datasets": int(p_ok.sum())}


def paired(spec: synthetic.Layer, datasets: int, shift: float, sims: int) -> dict:
    """Two checkpoints on one token stream (``synthetic.paired_noise``: exchangeable, so E[Δa] = 0 exactly when
    ``shift`` is 0), the second seen through a spectrum ``shift`` steeper; both analyzed with one seed. How often the
    paired 95 % interval of Δa covers E[Δa] (0, or the Monte Carlo mean), calibrated and first-order."""
    q, rng = synthetic.rotation(spec.dim), np.random.default_rng(1)
    seq = synthetic.sequences(spec)
    deltas, ivals, first, scales = [], [], [], []
    for i in range(datasets):
        z1, z2 = synthetic.paired_noise(spec, rng, redraw=0.05)
        s1, s2 = (spectrum_of(synthetic.moments(synthetic.draw(spec, rng, q, z=z, a=spec.a + da)[0], seq), 0,
                              storage_dtype=spec.storage_dtype, n_boot=1000, null_splits=8, seed=i, window=None,
                              calibration_sims=sims)
                  for z, da in ((z1, 0.0), (z2, shift)))
        deltas.append(s2.centered.a_wls - s1.centered.a_wls)
        rep = paired_replicates(*map(side, (s1, s2)), s1.blocks)  # as Trace.paired_boot forms them, per layer
        ivals.append(t_interval(deltas[-1], rep, s1.blocks))
        first_rep = s2.first_order - s1.first_order
        first.append(t_interval(deltas[-1], first_rep, s1.blocks))
        scales.append(np.std(rep) / np.std(first_rep) if np.std(first_rep) > 0 else 1.0)
    deltas, ivals, first = np.array(deltas), np.array(ivals), np.array(first)
    ok = np.isfinite(deltas) & np.isfinite(ivals).all(axis=1)
    truth = 0.0 if shift == 0 else float(deltas[ok].mean())
    inside = lambda iv: float(((iv[ok, 0] <= truth) & (truth <= iv[ok, 1])).mean())  # noqa: E731
    return {"dim": spec.dim, "tokens": spec.tokens, "a": spec.a, "shift": shift, "fitted": int(ok.sum()),
            "mean_delta": float(deltas[ok].mean()), "sd_delta": float(deltas[ok].std(ddof=1)),
            "median_width": float(np.median(np.diff(ivals[ok], axis=1))), "coverage": inside(ivals),
            "first_order_coverage": inside(first), "median_se_scale": float(np.median(np.array(scales)[ok]))}


def table(c: dict, rows: list[dict], pairs: list[dict], m: dict, n_sets: int, sims: int) -> str:
    costs = c if isinstance(c, list) else [c]
    top = costs[-1]
    lines = [f"One layer, 16 blocks, one BLAS thread ({m['cpu']}), each width timed in the same run:", "",
             "| d | N | float64 Gram pass (reads the data), s | SPINAL: spectrum + 95 % CI (1000 replicates) + null spread "
             "(8 splits), s | × Gram | v0.1: the same with 218 eigensolves, s | × Gram | analysis after the Gram pass | "
             "with the Gram pass |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in costs:
        lines.append(f"| {x['dim']} | {x['tokens']:,} | {x['gram_s']:.1f} | {x['spinal_s']:.1f} | "
                     f"{x['spinal_s'] / x['gram_s']:.2f} | {x['previous_s']:.0f} (2 fits + {PREVIOUS_CALLS} × "
                     f"{x['previous_per_replicate_s']:.2f}, timed over {x['exact_calls_timed']}) | "
                     f"{x['previous_over_gram']:.0f} | **{x['speedup_analysis']:.0f}× faster** | "
                     f"{x['speedup_with_gram']:.0f}× |")
    lines += ["", f"At d = {top['dim']} the v0.1 replicates' mean lay {top['previous_replicates_mean_minus_a']:+.4f} "
              f"from a (the duplicated-sequence bias). N = {top['tokens'] // top['dim']}·d is above the calibration's "
              f"{calibration.CALIBRATE_BELOW}·d, so nothing is simulated here.", ""]
    lines += ["Coverage of the 95 % interval over seeded synthetic layers (σ_k ∝ k^-a, sequences of 16 tokens (N/32 "
              "below 512) with a 30 % shared component, 16 blocks); where N ≤ 8·d the SE is κ·SE_jackknife (analyze/"
              f"calibration.py, κ from {sims} simulated layers per dataset, unpooled), c its ratio to the first-order "
              "SE (median), \"first-order\" the same replicates unscaled:", "",
              "| d | N | a | massive + bf16 | E[â] at N | sd(â) | width | c | covers E[â] | first-order covers E[â] | "
              "covers a | â inside | v0.1 covers E[â] | v0.1 â inside |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda x, f=".0%": "–" if not np.isfinite(x) else format(x, f)  # noqa: E731
    for r in rows:
        if not r["fitted"]:
            lines.append(f"| {r['dim']} | {r['tokens']} | {r['a']} | {'yes' if r['massive_bf16'] else 'no'} | "
                         "no dataset fitted: the bf16 noise floor ends the window below 10 ranks | | | | | | | | | |")
            continue
        fitted = "" if r["fitted"] == n_sets else f" ({r['fitted']} of {n_sets} fitted)"
        lines.append(f"| {r['dim']} | {r['tokens']} | {r['a']} | {'yes' if r['massive_bf16'] else 'no'}{fitted} | "
                     f"{r['mean_a']:.3f} | {r['sd_a']:.4f} | {r['median_width']:.3f} | {r['median_se_scale']:.2f} | "
                     f"**{pct(r['coverage_mean_a'], '.1%')}** | {pct(r['first_order_coverage_mean_a'], '.1%')} | "
                     f"{pct(r['coverage_population_a'])} | {pct(r['point_inside'])} | "
                     f"{pct(r['previous_coverage_mean_a'])} | {pct(r['previous_point_inside'])} |")
    lines += ["", f"{n_sets} datasets per row ({rows[0]['previous_datasets'] if rows else 0} for v0.1). â at N tokens is "
              "biased against the population a where N is small against d (the sample spectrum's tail spreads), so "
              "the interval is for E[â] at the stored token count: what two checkpoints on one token stream compare. "
              "With a massive coordinate and bf16 rounding â stays off the population a even at 32·d: storage, not "
              "sampling. First-order replicates alone over-cover these Gaussian layers where N ≤ 2·d (their spread "
              "misses how sample eigenvalues repel), while on real layers they under-cover (benchmarks/"
              f"check_real_coverage.py); where N ≤ {calibration.CALIBRATE_BELOW}·d the calibrated jackknife sets "
              "their spread (c).", "",
              "Paired Δa over the same token stream (two exchangeable checkpoints, 5 % of each one's variance drawn "
              "afresh; the second's spectrum as steep or 0.1 steeper), both analyzed with one seed; "
              "where N ≤ 8·d the Δ replicates' SE is κ times the paired exact jackknife's (the same block left out of "
              "both; Trace.paired_boot), c the resulting factor on the first-order Δ SE (median):", "",
              "| d | N | a → a′ | E[Δa] | sd(Δa) | width | c | covers E[Δa] | first-order covers E[Δa] |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in pairs:
        target = "0 (exact)" if r["shift"] == 0 else f"{r['mean_delta']:+.4f}"
        fitted = "" if r["fitted"] == n_sets else f" ({r['fitted']} of {n_sets} fitted)"
        lines.append(f"| {r['dim']} | {r['tokens']}{fitted} | {r['a']} → {r['a'] + r['shift']:.1f} | {target} | "
                     f"{r['sd_delta']:.4f} | {r['median_width']:.3f} | {r['median_se_scale']:.2f} | "
                     f"**{pct(r['coverage'], '.1%')}** | {pct(r['first_order_coverage'], '.1%')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048], help="widths of the cost rows")
    ap.add_argument("--tokens-per-dim", type=int, default=16, help="N = this × d in the cost rows")
    ap.add_argument("--exact-calls", type=int, default=6)
    ap.add_argument("--coverage-dim", type=int, default=128)
    ap.add_argument("--paired-dim", type=int, default=64)
    ap.add_argument("--datasets", type=int, default=200)
    ap.add_argument("--exact-datasets", type=int, default=30)
    ap.add_argument("--exact-boot", type=int, default=100)
    ap.add_argument("--sims", type=int, default=24, help="simulated layers per dataset: its κ alone, unpooled (a "
                    "trace spreads calibration_sims = 96 over its layers and pools them, 7 %% noise; 24 alone is 15 %%)")
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    ap.add_argument("--table-only", action="store_true", help="re-render the table from results/ci-cpu.json")
    ap.add_argument("--paired-only", action="store_true", help="recompute only the paired rows, keeping the rest of "
                    "results/ci-cpu.json")
    ap.add_argument("--cost-only", action="store_true", help="recompute only the cost rows, keeping the rest of "
                    "results/ci-cpu.json")
    args = ap.parse_args()
    if args.table_only:
        res = json.loads((Path(__file__).parent / "results" / "ci-cpu.json").read_text())
        datasets = res.get("datasets", args.datasets)
        publish(res, "ci-cpu", table(res["cost"], res["coverage"], res.get("paired", []), res["machine"], datasets,
                                     res.get("sims", 24)), "ci", args.update_docs)
        return
    kept = json.loads((Path(__file__).parent / "results" / "ci-cpu.json").read_text()) \
        if args.paired_only or args.cost_only else {}
    if args.paired_only:
        c, rows = kept["cost"], kept["coverage"]
    else:
        with threadpool_limits(1):  # per-core rates (what the planner scales); also spares a shared machine's cores
            c = [cost(d, args.tokens_per_dim * d, args.exact_calls) for d in args.dims]
        print(c, flush=True)
    if args.cost_only:
        res = {**kept, "machine": machine(), "cost": c}
        publish(res, "ci-cpu", table(c, res["coverage"], res["paired"], res["machine"], res["datasets"],
                                     res.get("sims", 24)), "ci", args.update_docs)
        return
        d = args.coverage_dim
        specs = [synthetic.Layer(d, n, a, tokens_per_sequence=max(1, min(16, n // 32)), massive=m, bf16=m)
                 for a in (0.5, 1.0) for m in (False, True) for n in (d // 2, 2 * d, 8 * d, 32 * d)]  # ≥ 32 seqs
        rows = []
        with threadpool_limits(1):
            for spec in specs:
                rows.append(coverage(spec, args.datasets, args.exact_datasets, args.exact_boot, args.sims))
                print(rows[-1], flush=True)
    pd_ = args.paired_dim
    pairs = []
    with threadpool_limits(1):
        for n in (pd_ // 2, 2 * pd_, 8 * pd_, 32 * pd_):
            spec = synthetic.Layer(pd_, n, 0.8, tokens_per_sequence=max(1, min(16, n // 32)), sequence_share=0.5)
            for shift in (0.0, 0.1):
                pairs.append(paired(spec, args.datasets, shift, args.sims))
                print(pairs[-1], flush=True)
    res = {"machine": machine(), "cost": c, "coverage": rows, "paired": pairs, "datasets": args.datasets,
           "sims": args.sims}
    publish(res, "ci-cpu", table(c, rows, pairs, machine(), args.datasets, args.sims), "ci", args.update_docs)


if __name__ == "__main__":
    main()
