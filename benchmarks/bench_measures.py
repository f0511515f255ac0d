"""What the field's measures cost on the demo: analyze with and without the rank intervals, compare with and without CKA.

    .venv/bin/spinal run configs/demo.toml          # the demo's stores and traces, once (out/demo)
    .venv/bin/python benchmarks/bench_measures.py [--out out/demo] [--rounds 3] [--update-docs]

Side by side, in rounds that alternate the order: `spinal analyze`'s function on the reference's store with the demo's
[analyze] options, `ranks` on (every rank's block shares, the effective rank's and RankMe's replicates) and off
(a's window's shares only); and `spinal compare`'s function on all the demo's traces and stores with its [compare]
options, `cka` on (a streamed cross-Gram per pair and layer over the demo's `cka_tokens` seeded tokens) and off.
The ratio of each round is on / off; the table shows each round's and their median. The budget (issue 41): none
above 1.25.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, publish  # noqa: E402

from spinal.analyze.compare.pipeline import comparison  # noqa: E402
from spinal.analyze.trace import analyze  # noqa: E402
from spinal.analyze.trace_format import Trace  # noqa: E402
from spinal.config import AnalyzeConfig, CompareConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 1.25


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _configs(out: Path):
    doc = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    labels = [c["label"] for c in doc["checkpoints"]]
    stores = [str(out / "stores" / f"{label}.zarr") for label in labels]
    traces = [Trace.load(out / "traces" / label) for label in labels]
    names = {f.name for f in fields(AnalyzeConfig)}
    acfg = AnalyzeConfig(store=stores[0], out=str(out / "bench-trace"),
                         **{k: v for k, v in doc["analyze"].items() if k in names})
    names = {f.name for f in fields(CompareConfig)}
    ccfg = CompareConfig(**{k: v for k, v in doc["compare"].items() if k in names})
    return acfg, ccfg, traces, stores


def measure(out: Path, rounds: int) -> dict:
    acfg, ccfg, traces, stores = _configs(out)
    analyze(acfg, label="warm-up")  # imports, page cache
    rows = {"analyze": [], "compare": []}
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        a = {on: _timed(lambda: analyze(replace(acfg, ranks=on), label=traces[0].label)) for on in order}
        c = {on: _timed(lambda: comparison(traces, replace(ccfg, cka=on), stores=stores, workers=acfg.workers))
             for on in order}
        rows["analyze"].append({"on_s": a[True], "off_s": a[False], "ratio": a[True] / a[False]})
        rows["compare"].append({"on_s": c[True], "off_s": c[False], "ratio": c[True] / c[False]})
        print(f"round {r + 1}: analyze {a[True]:.2f} / {a[False]:.2f} s, compare {c[True]:.2f} / {c[False]:.2f} s",
              flush=True)
    return {"rounds": rows, "median_ratio": {k: statistics.median(x["ratio"] for x in v) for k, v in rows.items()},
            "budget": BUDGET, "n_traces": len(traces), "store": stores[0], "machine": machine(),
            "measured": time.strftime("%Y-%m-%d"), "command": "benchmarks/bench_measures.py"}


def table(res: dict) -> str:
    cores = res["machine"]["cores"]
    lines = [f"The field's measures on the demo (13 layers, d = 96, {res['n_traces']} checkpoints), {cores} cores "
             "(`python benchmarks/bench_measures.py`, after `spinal run configs/demo.toml`):", "",
             "| step | with the measure | without | ratio per round | median ratio | budget |",
             "|---|---:|---:|---|---:|---:|"]
    what = {"analyze": "analyze, one checkpoint (effective rank and RankMe intervals: `ranks`)",
            "compare": f"compare, {res['n_traces'] - 1} pairs with stores (linear CKA per layer: `cka`)"}
    for k, rows in res["rounds"].items():
        on = statistics.median(x["on_s"] for x in rows)
        off = statistics.median(x["off_s"] for x in rows)
        per = ", ".join(f"{x['ratio']:.3f}" for x in rows)
        lines.append(f"| {what[k]} | {on:.2f} s | {off:.2f} s | {per} | {res['median_ratio'][k]:.3f} | "
                     f"≤ {res['budget']:g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="the demo run's folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    res = measure(args.out, args.rounds)
    publish(res, "measures-cpu", table(res), "measures", args.update_docs)


if __name__ == "__main__":
    main()
