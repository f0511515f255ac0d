"""The per-core rates `spinal plan` prices an analysis with, measured on this machine, one BLAS thread each.

    .venv/bin/python benchmarks/bench_rates.py [--dims 1024 2048 4096] [--write]

- Gram: analyze/contraction/gram.py's accumulator (16 blocks, float32 rows upcast, per-block SYRKs and merges) at d = 2048,
  in GFLOP/s of N·d² per pass.
- Eigen: one float64 ``eigh`` with vectors plus one ``eigvalsh`` (what a layer costs, analyze/contraction/layer_spectrum.py)
  at each d, and the constant c of ``seconds = c·d³`` fitted to them (the planner extrapolates with it).
- Shares: the float64 (d, d) × (d, d/2) product per block that gives each block's share of the spectrum, GFLOP/s.
- Lens: float32 (T × d) × (d × V) plus log-softmax (the logit lens, analyze/transport/lens_pass.py), GFLOP/s of 2·T·d·V.

``--write`` stores them in cluster/planner/analysis_rates.json, which PlanConfig takes its defaults from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, machine  # noqa: E402

from spinal.analyze.contraction.gram import GramAccumulator  # noqa: E402

RATES = Path(__file__).resolve().parent.parent / "cluster" / "planner" / "analysis_rates.json"


def measure(dims: list[int]) -> dict:
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        x = rng.standard_normal((16384, 2048)).astype(np.float32)  # stored rows, as the store hands them over
        ids = np.arange(16384) // 128 % 16  # sequences of 128 tokens in 16 blocks
        gram = 16384 * 2048**2 / best_of(lambda: GramAccumulator(2048, 16).update(x, ids).finish(), 2) / 1e9
        m = rng.standard_normal((2048, 2048))
        v = rng.standard_normal((2048, 1024))
        shares = 2 * 2048 * 2048 * 1024 / best_of(lambda: m @ v, 2) / 1e9
        h = torch.randn(1024, 2048)
        w = torch.randn(2048, 32000)
        lens = 2 * 1024 * 2048 * 32000 / best_of(lambda: torch.log_softmax(h @ w, dim=-1), 2) / 1e9
        eigen = {}
        for d in dims:
            a = rng.standard_normal((d, d))
            g = a @ a.T
            eigen[d] = best_of(lambda: np.linalg.eigh(g), 1) + best_of(lambda: np.linalg.eigvalsh(g), 1)
            print(f"d = {d}: eigh + eigvalsh {eigen[d]:.1f} s", flush=True)
    ds = np.array(dims, dtype=float)
    secs = np.array([eigen[d] for d in dims])
    c = float(np.exp(np.mean(np.log(secs / ds**3))))  # least squares of log s = log c + 3 log d
    return {"gram_gflops_per_core": gram, "shares_gflops_per_core": shares, "lens_gflops_per_core": lens,
            "eigen_seconds": {str(d): eigen[d] for d in dims}, "eigen_c_d3": c,
            "eigen_fit_max_rel_error": float(np.max(np.abs(c * ds**3 / secs - 1))),
            "machine": machine(), "measured": time.strftime("%Y-%m-%d"),
            "command": "benchmarks/bench_rates.py --dims " + " ".join(map(str, dims))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--write", action="store_true", help=f"store the rates in {RATES.relative_to(RATES.parent.parent)}")
    args = ap.parse_args()
    r = measure(args.dims)
    print(json.dumps(r, indent=2))
    (Path(__file__).parent / "results").mkdir(exist_ok=True)
    (Path(__file__).parent / "results" / "rates-cpu.json").write_text(json.dumps(r, indent=2))
    if args.write:
        RATES.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
