"""Analysis speed against the alternatives and the machine's own GEMM rates, in one run.

    .venv/bin/python benchmarks/bench_analysis.py [--tokens 32768 --dim 1024] [--update-readme]

- Spectrum of one layer: SPINAL's chunked float64 Gram + eigvalsh against a full
  `numpy.linalg.svd` and `scipy.linalg.svd` of the same (token × dim) matrix, with the largest
  relative difference of the singular values wherever σ_k ≥ 1e-5·σ₁.
- Gram pass rate against this machine's float64 GEMM rate on the same shapes.
- Lens (logit-lens + Fisher–Rao) rate against the float32 GEMM rate on the same shapes, and
  against a straightforward PyTorch loop (full softmax, `2·arccos(Σ√(pq))`).
- Peak memory of a Gram pass at N and 2N tokens (each in its own process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import child_peak_rss_mib, machine, update_readme  # noqa: E402

HERE = Path(__file__).parent


def power_law_matrix(n: int, d: int, a: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.arange(1, d + 1, dtype=np.float64) ** -a
    return ((rng.standard_normal((n, d)) * s) @ q.T).astype(np.float32)  # (token, dim)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def spinal_spectrum(h: np.ndarray, chunk: int = 4096) -> np.ndarray:
    from spinal.analyze.gram import GramAccumulator
    from spinal.analyze.spectrum import singular_values

    acc = GramAccumulator(h.shape[1], blocks=16)
    ids = np.arange(h.shape[0]) // 64 % 16  # sequences of 64 tokens, 16 bootstrap blocks
    for a in range(0, h.shape[0], chunk):
        acc.update(h[a : a + chunk], ids[a : a + chunk])
    return singular_values(acc.result().eigenvalues(centered=True))


def weightwatcher_fit(h: np.ndarray) -> dict | None:
    """WeightWatcher's power-law fit of the same matrix (as a layer weight), timed; None if not installed."""
    try:
        import logging

        import weightwatcher as ww
    except ImportError:
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    lin = torch.nn.Linear(h.shape[1], h.shape[0], bias=False)
    lin.weight.data = torch.from_numpy(h)  # (out = token, in = dim): its ESD is that of HᵀH
    t = time.perf_counter()
    df = ww.WeightWatcher(model=torch.nn.Sequential(lin)).analyze()
    secs = time.perf_counter() - t
    alpha = float(df["alpha"].iloc[0])
    return {"seconds": secs, "alpha_esd": alpha, "a": 1 / (2 * (alpha - 1))}


def gemm_rate(m: int, k: int, n: int, dtype) -> float:
    x = np.random.default_rng(0).standard_normal((m, k)).astype(dtype)
    y = np.random.default_rng(1).standard_normal((k, n)).astype(dtype)
    t = best_of(lambda: x @ y)
    return 2 * m * k * n / t


def lens_rates(n: int, d: int, vocab: int) -> dict:
    from spinal.analyze.transport import fisher_rao
    from spinal.lens import Lens, LensSpec

    g = torch.Generator().manual_seed(0)
    lens = Lens(LensSpec(norm="rms"), torch.randn(vocab, d, generator=g) / d**0.5, torch.ones(d))
    h0, h1 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    chunk = 1024

    @torch.no_grad()
    def ours():
        for a in range(0, n, chunk):
            fisher_rao(lens.log_probs(h0[a : a + chunk]), lens.log_probs(h1[a : a + chunk]))

    @torch.no_grad()
    def naive():  # what a user writes: softmax, then 2·arccos of the Bhattacharyya coefficient
        p = torch.softmax(lens.logits(h0), -1)
        q = torch.softmax(lens.logits(h1), -1)
        2 * torch.arccos(torch.sqrt(p * q).sum(-1).clamp(max=1))

    t_ours, t_naive = best_of(ours, 2), best_of(naive, 2)
    flops = 2 * (2 * n * d * vocab)  # two layers' readouts
    x, w = torch.randn(chunk, d), torch.randn(vocab, d)
    t_gemm = best_of(lambda: [x @ w.T for _ in range(n // chunk * 2)], 2)
    return {"seconds": t_ours, "naive_seconds": t_naive, "gflops": flops / t_ours / 1e9,
            "gemm_gflops": flops / t_gemm / 1e9}


def peak_gram_rss(n: int, d: int) -> float:
    code = (
        "import resource, numpy as np, sys; sys.path.insert(0, %r);"
        
        "rng = np.random.default_rng(0);"
        "from spinal.analyze.gram import GramAccumulator;"
        "acc = GramAccumulator(%d, blocks=16)\n"
        "for a in range(0, %d, 4096):\n"
        "    x = rng.standard_normal((4096, %d)).astype(np.float32); acc.update(x, np.arange(4096) %% 16)\n"
        "acc.result().eigenvalues(True); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    ) % (str(HERE), d, n, d)
    return child_peak_rss_mib(code)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--lens-tokens", type=int, default=4096)
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="re-render the README table from results/ JSON")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads((HERE / "results" / "analysis-cpu.json").read_text())
        update_readme("analysis", render(res))
        return res
    n, d = args.tokens, args.dim
    h = power_law_matrix(n, d)
    sv_ours = spinal_spectrum(h)
    t_ours = best_of(lambda: spinal_spectrum(h), 2)
    h64 = h.astype(np.float64)
    hc = h64 - h64.mean(axis=0)
    t_np = best_of(lambda: np.linalg.svd(hc, compute_uv=False), 1)  # centering excluded from their time
    sv_np = np.linalg.svd(hc, compute_uv=False)
    t_sp = best_of(lambda: scipy.linalg.svd(hc, compute_uv=False, lapack_driver="gesdd"), 1)
    from spinal.analyze.spectrum import fit_spectrum

    ours_fit = fit_spectrum(sv_ours**2, n_tokens=n, dim=d, rms=np.sqrt((h.astype(np.float64) ** 2).mean(0)),
                            storage_dtype="float32")
    wwr = weightwatcher_fit(h)
    keep = sv_np >= 1e-5 * sv_np[0]
    rel = float(np.max(np.abs(sv_ours[: keep.sum()] - sv_np[keep]) / sv_np[keep]))
    # Gram pass alone (no eigvalsh) vs float64 GEMM on the same (dim × chunk) @ (chunk × dim) shapes
    from spinal.analyze.gram import GramAccumulator

    def gram_only():
        acc = GramAccumulator(d, blocks=16)
        ids = np.arange(n) // 64 % 16  # sequences of 64 tokens, 16 bootstrap blocks
        for a in range(0, n, 4096):
            acc.update(h[a : a + 4096], ids[a : a + 4096])

    t_gram = best_of(gram_only, 2)
    gram_gflops = 2 * n * d * d / t_gram / 1e9
    gemm64 = gemm_rate(d, 4096, d, np.float64) / 1e9
    lens = lens_rates(args.lens_tokens, d, args.vocab)
    mem = {f"{n // 2} tokens": peak_gram_rss(n // 2, d), f"{n} tokens": peak_gram_rss(n, d)}
    res = {
        "benchmark": "analysis", "machine": machine(), "tokens": n, "dim": d, "vocab": args.vocab,
        "spectrum_seconds": {"spinal": t_ours, "numpy_svd": t_np, "scipy_svd_gesdd": t_sp},
        "spectrum_speedup": {"vs_numpy_svd": t_np / t_ours, "vs_scipy_svd": t_sp / t_ours},
        "spectrum_max_rel_diff": rel,
        "true_a": 1.0, "spinal_a": ours_fit.a_wls, "spinal_status": ours_fit.status, "weightwatcher": wwr,
        "gram_gflops": gram_gflops, "gemm64_gflops": gemm64, "gram_fraction_of_gemm": gram_gflops / gemm64,
        "lens": lens, "lens_fraction_of_gemm": lens["gflops"] / lens["gemm_gflops"],
        "lens_speedup_vs_naive": lens["naive_seconds"] / lens["seconds"],
        "peak_rss_mib": mem,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "analysis-cpu.json").write_text(json.dumps(res, indent=2))
    table = render(res)
    print(table)
    if args.update_readme:
        update_readme("analysis", table)
    return res


def render(r: dict) -> str:
    s, m = r["spectrum_seconds"], list(r["peak_rss_mib"].items())
    return "\n".join([
        f"Analysis, one layer of {r['tokens']:,} tokens × {r['dim']} dims, {r['machine']['cores']} cores "
        "(`python benchmarks/bench_analysis.py`):",
        "",
        "| what | SPINAL | alternative | ratio |",
        "|---|---:|---:|---:|",
        f"| spectrum (all singular values) | {s['spinal']:.2f} s | numpy SVD {s['numpy_svd']:.2f} s | "
        f"{r['spectrum_speedup']['vs_numpy_svd']:.1f}× faster |",
        f"| | | scipy SVD (gesdd) {s['scipy_svd_gesdd']:.2f} s | {r['spectrum_speedup']['vs_scipy_svd']:.1f}× faster |",
        f"| same singular values (σ_k ≥ 1e-5 σ₁) | max relative difference {r['spectrum_max_rel_diff']:.1e} | | |",
        (f"| power-law fit, true a = {r['true_a']:g} | a = {r['spinal_a']:.3f} ({r['spinal_status']}), "
         f"{s['spinal']:.2f} s incl. spectrum | WeightWatcher α = {r['weightwatcher']['alpha_esd']:.3f} → "
         f"a = {r['weightwatcher']['a']:.3f}, {r['weightwatcher']['seconds']:.2f} s | "
         f"{r['weightwatcher']['seconds'] / s['spinal']:.1f}× faster |") if r.get("weightwatcher") else
        "| power-law fit | | WeightWatcher not installed | |",
        f"| float64 Gram pass (2·N·d² counted; SYRK computes half) | {r['gram_gflops']:.1f} GFLOP/s | float64 GEMM {r['gemm64_gflops']:.1f} GFLOP/s | "
        f"{r['gram_fraction_of_gemm']:.0%} of GEMM |",
        f"| lens + Fisher–Rao (vocab {r['vocab']:,}) | {r['lens']['gflops']:.1f} GFLOP/s | float32 GEMM "
        f"{r['lens']['gemm_gflops']:.1f} GFLOP/s | {r['lens_fraction_of_gemm']:.0%} of GEMM |",
        f"| | {r['lens']['seconds']:.2f} s | naive PyTorch loop {r['lens']['naive_seconds']:.2f} s | "
        f"{r['lens_speedup_vs_naive']:.2f}× |",
        "",
        f"Peak RSS of a Gram pass: {m[0][1]:,.0f} MiB at {m[0][0]}, {m[1][1]:,.0f} MiB at {m[1][0]}.",
    ])


if __name__ == "__main__":
    main()
