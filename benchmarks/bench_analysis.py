"""Analysis speed against the alternatives and the machine's own GEMM rates, in one run.

    .venv/bin/python benchmarks/bench_analysis.py [--tokens 32768 --dim 1024] [--update-docs]

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
from scipy.linalg.blas import dsyrk
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import PRINT_PEAK_RSS, best_of, child_peak_rss_mib, machine, publish, update_docs  # noqa: E402

HERE = Path(__file__).parent


def power_law_matrix(n: int, d: int, a: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.arange(1, d + 1, dtype=np.float64) ** -a
    return ((rng.standard_normal((n, d)) * s) @ q.T).astype(np.float32)  # (token, dim)


def spinal_spectrum(h: np.ndarray, chunk: int = 4096) -> np.ndarray:
    from spinal.analyze.contraction.gram import GramAccumulator
    from spinal.analyze.contraction.spectrum import singular_values

    acc = GramAccumulator(h.shape[1], blocks=16)
    ids = np.arange(h.shape[0]) // 64 % 16  # sequences of 64 tokens, 16 bootstrap blocks
    for a in range(0, h.shape[0], chunk):
        acc.update(h[a : a + chunk], ids[a : a + chunk])
    return singular_values(acc.finish().eigenvalues(centered=True))


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


def _fisher_rao_float64(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Brute-force float64 ``2 arccos(Σ √(p q))`` per token, the accuracy reference (BC may round past 1)."""
    return 2 * np.arccos(np.clip(np.sqrt(p * q).sum(axis=-1), 0.0, 1.0))


def lens_rates(n: int, d: int, vocab: int, n_layers: int = 5) -> dict:
    """SPINAL's lens pass (``transport_chunk``, no companions) against a straightforward PyTorch loop.

    Layers are a random walk whose steps shrink tenfold (L from ~0.6 down to ~6e-4), so the
    accuracy row also shows what float32 ``2·arccos(Σ√(pq))`` does to small adjacent-layer steps.
    Both do one readout per layer; the loop keeps the previous layer's softmax.
    """
    from spinal.analyze.transport.lens_pass import transport_chunk
    from spinal.config import AnalyzeConfig
    from spinal.lens import Lens, LensSpec

    g = torch.Generator().manual_seed(0)
    lens = Lens(LensSpec(norm="rms"), 2 * torch.randn(vocab, d, generator=g) / d**0.5)
    hs = [torch.randn(n, d, generator=g)]
    for step in range(n_layers - 1):
        hs.append(hs[-1] + 0.3 * 10.0**-step * torch.randn(n, d, generator=g))
    h = torch.stack(hs)  # (layer, token, dim)
    chunk = max(1, (AnalyzeConfig.__dataclass_fields__["chunk_mib"].default << 20) // (4 * vocab * 3))
    none = torch.zeros(0, dtype=torch.long)

    def ours():
        bufs = [torch.empty(min(chunk, n), vocab) for _ in range(3)]
        parts = [transport_chunk(lens, h[:, a : a + chunk], none, [b[: min(chunk, n - a)] for b in bufs])
                 for a in range(0, n, chunk)]
        return [np.concatenate([p.steps_L[j] for p in parts]) for j in range(n_layers - 1)]

    @torch.no_grad()
    def naive():  # what a user writes: softmax per layer, then 2·arccos of the Bhattacharyya coefficient
        out, p = [], torch.softmax(lens.logits(h[0]), -1)
        for layer in range(1, n_layers):
            q = torch.softmax(lens.logits(h[layer]), -1)
            out.append((2 * torch.arccos(torch.sqrt(p * q).sum(-1).clamp(max=1))).numpy())
            p = q
        return out

    t_ours, t_naive = best_of(ours, 2), best_of(naive, 2)
    sub = slice(0, min(n, 512))  # float64 reference on the first tokens: logits and softmax in float64
    with torch.no_grad():
        x = h[:, sub].double()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + lens.spec.eps)  # the RMS lens in float64
        ref_p = [torch.softmax(x[layer] @ lens.unembed.double().T, -1).numpy() for layer in range(n_layers)]
    ref = [_fisher_rao_float64(ref_p[j], ref_p[j + 1]).mean() for j in range(n_layers - 1)]
    err = lambda got: [float(abs(v[sub].astype(np.float64).mean() - r) / r) for v, r in zip(got, ref)]  # noqa: E731
    flops = n_layers * 2 * n * d * vocab  # one readout per layer
    x, w = torch.randn(chunk, d), torch.randn(vocab, d)
    t_gemm = best_of(lambda: [x @ w.T for _ in range(max(1, n // chunk) * n_layers)], 2)
    gemm_flops = max(1, n // chunk) * n_layers * 2 * chunk * d * vocab
    return {"seconds": t_ours, "naive_seconds": t_naive, "gflops": flops / t_ours / 1e9,
            "gemm_gflops": gemm_flops / t_gemm / 1e9, "layers": n_layers, "chunk": chunk,
            "reference_L_mean": [float(r) for r in ref], "rel_err_ours": err(ours()), "rel_err_naive": err(naive())}


def peak_gram_rss(n: int, d: int) -> float:
    code = (
        "import resource, numpy as np, sys; sys.path.insert(0, %r);"
        
        "rng = np.random.default_rng(0);"
        "from spinal.analyze.contraction.gram import GramAccumulator;"
        "acc = GramAccumulator(%d, blocks=16)\n"
        "for a in range(0, %d, 4096):\n"
        "    x = rng.standard_normal((4096, %d)).astype(np.float32); acc.update(x, np.arange(4096) %% 16)\n"
        "acc.finish().eigenvalues(True)\n"
    ) % (str(HERE), d, n, d) + PRINT_PEAK_RSS
    return child_peak_rss_mib(code)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--tokens", 32768), ("--dim", 1024), ("--vocab", 32000), ("--lens-tokens", 4096)):
        ap.add_argument(flag, type=int, default=default)  # the problem's sizes
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    ap.add_argument("--render-only", action="store_true", help="re-render the docs/benchmarks.md table from results/ JSON")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads((HERE / "results" / "analysis-cpu.json").read_text())
        update_docs("analysis", render(res))
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
    # The floor of any float64-Gram spectrum on this machine: one SYRK of the whole centered matrix,
    # already in memory as float64, and one eigvalsh. SPINAL streams chunks, keeps 16 block Grams for
    # the bootstrap and centers per chunk on top of this.
    t_floor = best_of(lambda: np.linalg.eigvalsh(dsyrk(1.0, hc.T, trans=0, lower=1), UPLO="U"), 2)
    from spinal.analyze.contraction.spectrum import fit_spectrum

    ours_fit = fit_spectrum(sv_ours**2, n_tokens=n, dim=d, rms=np.sqrt((h.astype(np.float64) ** 2).mean(0)),
                            storage_dtype="float32")
    wwr = weightwatcher_fit(h)
    keep = sv_np >= 1e-5 * sv_np[0]
    rel = float(np.max(np.abs(sv_ours[: keep.sum()] - sv_np[keep]) / sv_np[keep]))
    # Gram pass alone (no eigvalsh) vs float64 GEMM on the same (dim × chunk) @ (chunk × dim) shapes
    from spinal.analyze.contraction.gram import GramAccumulator

    def gram_only():
        acc = GramAccumulator(d, blocks=16)
        ids = np.arange(n) // 64 % 16  # sequences of 64 tokens, 16 bootstrap blocks
        for a in range(0, n, 4096):
            acc.update(h[a : a + 4096], ids[a : a + 4096])
        acc.finish()

    t_gram = best_of(gram_only, 2)
    gram_gflops = n * d * (d + 1) / t_gram / 1e9  # the flops the Gram needs: 2N per upper-triangle entry
    gemm64 = gemm_rate(d, 4096, d, np.float64) / 1e9
    lens = lens_rates(args.lens_tokens, d, args.vocab)
    mem = {f"{n // 2} tokens": peak_gram_rss(n // 2, d), f"{n} tokens": peak_gram_rss(n, d)}
    res = {
        "benchmark": "analysis", "machine": machine(), "tokens": n, "dim": d, "vocab": args.vocab, "lens_tokens": args.lens_tokens,
        "spectrum_seconds": {"spinal": t_ours, "numpy_svd": t_np, "scipy_svd_gesdd": t_sp,
                             "floor_one_syrk_eigvalsh": t_floor},
        "spectrum_speedup": {"vs_numpy_svd": t_np / t_ours, "vs_scipy_svd": t_sp / t_ours},
        "spectrum_max_rel_diff": rel,
        "true_a": 1.0, "spinal_a": ours_fit.a_wls, "spinal_status": ours_fit.status, "weightwatcher": wwr,
        "gram_gflops": gram_gflops, "gemm64_gflops": gemm64, "gram_fraction_of_gemm": gram_gflops / gemm64,
        "lens": lens, "lens_fraction_of_gemm": lens["gflops"] / lens["gemm_gflops"],
        "lens_speedup_vs_naive": lens["naive_seconds"] / lens["seconds"],
        "peak_rss_mib": mem,
    }
    publish(res, "analysis-cpu", render(res), "analysis", args.update_docs)
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
        (f"| floor of any float64 Gram method (one SYRK of the in-memory matrix + eigvalsh) | "
         f"{s['floor_one_syrk_eigvalsh']:.2f} s | numpy SVD {s['numpy_svd']:.2f} s | "
         f"{s['numpy_svd'] / s['floor_one_syrk_eigvalsh']:.1f}× faster |"),
        f"| same singular values (σ_k ≥ 1e-5 σ₁) | max relative difference {r['spectrum_max_rel_diff']:.1e} | | |",
        (f"| power-law fit, true a = {r['true_a']:g} | a = {r['spinal_a']:.3f} ({r['spinal_status']}), "
         f"{s['spinal']:.2f} s incl. spectrum | WeightWatcher α = {r['weightwatcher']['alpha_esd']:.3f} → "
         f"a = {r['weightwatcher']['a']:.3f}, {r['weightwatcher']['seconds']:.2f} s | "
         f"{r['weightwatcher']['seconds'] / s['spinal']:.1f}× faster |") if r.get("weightwatcher") else
        "| power-law fit | | WeightWatcher not installed | |",
        f"| float64 Gram pass (N·d(d+1) flops: the upper triangle, 16 block Grams) | {r['gram_gflops']:.1f} GFLOP/s | float64 GEMM {r['gemm64_gflops']:.1f} GFLOP/s | "
        f"{r['gram_fraction_of_gemm']:.0%} of GEMM |",
        f"| lens + Fisher–Rao (vocab {r['vocab']:,}, {r['lens']['layers']} layers × {r['lens_tokens']:,} tokens) | {r['lens']['gflops']:.1f} GFLOP/s | float32 GEMM "
        f"{r['lens']['gemm_gflops']:.1f} GFLOP/s | {r['lens_fraction_of_gemm']:.0%} of GEMM |",
        f"| | {r['lens']['seconds']:.2f} s | naive PyTorch loop {r['lens']['naive_seconds']:.2f} s | "
        f"{r['lens_speedup_vs_naive']:.2f}× |",
        f"| mean L per step vs float64 (steps of L ≈ {', '.join(f'{v:.0e}' for v in r['lens']['reference_L_mean'])}) | "
        f"relative error {', '.join(f'{v:.0e}' for v in r['lens']['rel_err_ours'])} | naive float32 arccos "
        f"{', '.join(f'{v:.0e}' for v in r['lens']['rel_err_naive'])} | |",
        "",
        f"Peak RSS of a Gram pass: {m[0][1]:,.0f} MiB at {m[0][0]}, {m[1][1]:,.0f} MiB at {m[1][0]}.",
    ])


if __name__ == "__main__":
    main()
