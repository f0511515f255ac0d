"""How capture and analysis time and memory grow with tokens (×1, ×2, ×4) and with hidden size; log-log slopes reported.

    .venv/bin/python benchmarks/bench_scaling.py [--update-docs]

Each point runs in its own process (so peak RSS is that point's own). A slope of 1 in time means
linear in tokens; a slope near 0 in memory means memory does not grow with tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import PRINT_PEAK_RSS, child_peak_rss_mib, llama_50m, machine, publish, run_child, write_prompts  # noqa: E402

HERE = Path(__file__).parent

_CAPTURE = (
    "import resource, time, sys; from spinal.capture import capture; from spinal.config import CaptureConfig\n"
    "t = time.perf_counter(); capture(CaptureConfig(model=%r, prompts=%r, out=%r, batch_size=8, overwrite=True))\n"
    "print(time.perf_counter() - t, file=sys.stderr)\n" + PRINT_PEAK_RSS
)
_GRAM = (
    "import resource, time, sys, numpy as np; from spinal.analyze.contraction.gram import GramAccumulator\n"
    "n, d = %d, %d; rng = np.random.default_rng(0); acc = GramAccumulator(d, blocks=16); ids = np.arange(n) // 64 %% 16\n"
    "x = rng.standard_normal((4096, d)).astype(np.float32)  # one chunk, fed again: data making is not timed\n"
    "t = time.perf_counter()\n"
    "for a in range(0, n, 4096):\n"
    "    acc.update(x[: min(4096, n - a)], ids[a:a + 4096])\n"
    "acc.finish().eigenvalues(True); print(time.perf_counter() - t, file=sys.stderr)\n"
    + PRINT_PEAK_RSS
)


def _run(code: str) -> tuple[float, float]:
    """(seconds printed last on stderr, peak RSS MiB printed last on stdout) of a child process."""
    rss, secs = run_child(code)
    return float(secs), float(rss)


def slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48, help="prompts at ×1 (128 tokens each)")
    ap.add_argument("--tokens", type=int, default=8192, help="analysis tokens at ×1")
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="spinal-scaling-"))
    ckpt = llama_50m(work / "llama50m")
    cap = []
    for k in (1, 2, 4):
        p = write_prompts(work / f"p{k}.jsonl", k * args.prompts, 128)
        secs, _ = _run(_CAPTURE % (str(ckpt), str(p), str(work / f"s{k}.zarr")))
        cap.append((k * args.prompts * 127, secs, child_peak_rss_mib(_CAPTURE % (str(ckpt), str(p), str(work / f"m{k}.zarr")))))
    gram_n = [(k * args.tokens, *_run(_GRAM % (k * args.tokens, 512))) for k in (1, 2, 4)]
    gram_d = [(d, *_run(_GRAM % (2 * args.tokens, d))) for d in (256, 512, 1024)]
    res = {
        "benchmark": "scaling", "machine": machine(),
        "capture_vs_tokens": [{"tokens": n, "seconds": s, "peak_rss_mib": m} for n, s, m in cap],
        "gram_vs_tokens_d512": [{"tokens": n, "seconds": s, "peak_rss_mib": m} for n, s, m in gram_n],
        "gram_vs_dim": [{"dim": d, "tokens": 2 * args.tokens, "seconds": s, "peak_rss_mib": m} for d, s, m in gram_d],
        "slopes": {
            "capture_time_vs_tokens": slope([c[0] for c in cap], [c[1] for c in cap]),
            "capture_rss_vs_tokens": slope([c[0] for c in cap], [c[2] for c in cap]),
            "gram_time_vs_tokens": slope([g[0] for g in gram_n], [g[1] for g in gram_n]),
            "gram_rss_vs_tokens": slope([g[0] for g in gram_n], [g[2] for g in gram_n]),
            "gram_time_vs_dim": slope([g[0] for g in gram_d], [g[1] for g in gram_d]),
        },
    }
    publish(res, "scaling-cpu", render(res), "scaling", args.update_docs)
    return res


def render(r: dict) -> str:
    s = r["slopes"]
    rows = [
        f"Scaling, {r['machine']['cores']} cores (`python benchmarks/bench_scaling.py`); slopes are d log(y) / d log(x):",
        "",
        "| what | ×1 | ×2 | ×4 | slope |",
        "|---|---:|---:|---:|---:|",
    ]
    c = r["capture_vs_tokens"]
    rows.append(f"| capture time, 58M Llama ({c[0]['tokens']:,} → {c[2]['tokens']:,} tokens) | "
                + " | ".join(f"{x['seconds']:.1f} s" for x in c) + f" | {s['capture_time_vs_tokens']:.2f} |")
    rows.append("| capture peak RSS | " + " | ".join(f"{x['peak_rss_mib']:,.0f} MiB" for x in c)
                + f" | {s['capture_rss_vs_tokens']:.2f} |")
    g = r["gram_vs_tokens_d512"]
    rows.append(f"| Gram + eigvalsh time, d = 512 ({g[0]['tokens']:,} → {g[2]['tokens']:,} tokens) | "
                + " | ".join(f"{x['seconds']:.2f} s" for x in g) + f" | {s['gram_time_vs_tokens']:.2f} |")
    rows.append("| Gram peak RSS | " + " | ".join(f"{x['peak_rss_mib']:,.0f} MiB" for x in g)
                + f" | {s['gram_rss_vs_tokens']:.2f} |")
    d = r["gram_vs_dim"]
    rows.append(f"| Gram + eigvalsh time vs d = 256, 512, 1024 ({d[0]['tokens']:,} tokens) | "
                + " | ".join(f"{x['seconds']:.2f} s" for x in d) + f" | {s['gram_time_vs_dim']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
