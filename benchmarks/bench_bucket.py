"""Stores in a bucket against stores on local disk: capture, a whole-store read and analysis, side by side in one run.

    .venv/bin/python benchmarks/bench_bucket.py [--prompts 64] [--length 128] [--rounds 3] [--update-docs]

The bucket is moto's S3 server (``pip install -e ".[dev]"``), started here as its own process on 127.0.0.1, reached
through s3fs as any S3 endpoint is (``AWS_ENDPOINT_URL``). Each round times, for the local folder and for the bucket
back to back (which goes first alternates from round to round): a capture of the ~58M-parameter Llama-style model
(benchmarks/common.py) into a new store (in this process, the model loaded once, as bench_capture.py times it), a
read of the store's whole ``hidden`` array through zarr (decoded, checksums checked) in a fresh process, and
``spinal analyze`` of the store in a fresh process (one worker per core; fewer bootstrap replicates and no
calibration layers, whose compute is the same wherever the store is: ``ANALYZE``). Ratios are
taken within a round (a shared machine's speed drifts over minutes) and the median over rounds is reported.

moto is a Python server running on the same cores as SPINAL, keeping every object in memory and answering one
request per thread under the GIL: its throughput is a floor for a real S3 endpoint, not an estimate of one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import llama_50m, machine, publish, write_prompts  # noqa: E402

BUCKET = "spinal-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own on a free 127.0.0.1 port; (process, endpoint URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("moto's server did not start (pip install 'moto[server]')")


def stored_bytes(fs, root: str) -> int:
    return sum(int(i["size"]) for i in fs.find(f"{root}/hidden", detail=True).values())


def time_capture(ckpt: Path, prompts: Path, out: str, batch: int, model, tok) -> float:
    from spinal.capture import capture
    from spinal.capture.load import Loaded
    from spinal.config import CaptureConfig

    source = {"model": str(ckpt), "weights_fingerprint": "bench", "tokenizer": {"fingerprint": "bench"},
              "architecture": type(model).__name__}
    cfg = CaptureConfig(model=str(ckpt), prompts=str(prompts), out=out, batch_size=batch)
    t = time.perf_counter()
    capture(cfg, loaded=Loaded(model, tok, source))
    return time.perf_counter() - t


READ = """
import sys, time, numpy as np
from spinal.store.contract import Store
t = time.perf_counter()
s = Store.open(sys.argv[1])
a = np.asarray(s.hidden[...])
print(time.perf_counter() - t, a.nbytes)
"""


def time_read(store: str) -> tuple[float, int]:
    """Seconds to open a store and read its whole ``hidden`` array through zarr, in a fresh process; raw bytes."""
    r = subprocess.run([sys.executable, "-c", READ, store], capture_output=True, text=True, check=True)
    seconds, nbytes = r.stdout.split()
    return float(seconds), int(nbytes)


# Analysis options: the defaults, but fewer bootstrap replicates, null splits and calibration layers, whose compute
# (the same wherever the store is) would otherwise hide the reads this benchmark is about.
ANALYZE = ("--n-boot", "100", "--null-splits", "2", "--calibration-sims", "0")


def time_analyze(store: str, out: Path) -> float:
    """Wall seconds of `spinal analyze` (a fresh process, ``ANALYZE``), as the trace records them."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "spinal.cli.app", "analyze", store, "-o", str(out), "--no-progress",
                    *ANALYZE], capture_output=True, text=True, check=True)
    return float(json.loads((out / "trace.json").read_text())["seconds"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spinal-bench-bucket-"))
    proc, endpoint = start_moto()
    try:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)  # for s3fs here and in every child process
        import boto3
        import s3fs

        boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                    if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        fs = s3fs.S3FileSystem(use_listings_cache=False)
        return _measure(args, work, fs, endpoint)
    finally:
        proc.kill()
        proc.wait()


def _measure(args, work: Path, fs, endpoint: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = llama_50m(work / "llama50m")
    prompts = write_prompts(work / "prompts.jsonl", args.prompts, args.length)
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)
    sites = {"local": lambda r: str(work / f"local-{r}.zarr"), "bucket": lambda r: f"s3://{BUCKET}/bucket-{r}.zarr"}
    runs = {site: {"capture": [], "read": [], "analyze": []} for site in sites}
    nbytes = stored = 0
    for r in range(args.rounds):
        order = list(sites) if r % 2 == 0 else list(sites)[::-1]
        for step in ("capture", "read", "analyze"):
            for site in order:
                store = sites[site](r)
                if step == "capture":
                    runs[site]["capture"].append(time_capture(ckpt, prompts, store, args.batch, model, tok))
                elif step == "read":
                    seconds, nbytes = time_read(store)
                    runs[site]["read"].append(seconds)
                else:
                    runs[site]["analyze"].append(time_analyze(store, work / f"trace-{site}"))
        stored = stored_bytes(fs, f"{BUCKET}/bucket-{r}.zarr")
        for site in sites:  # the stores of a finished round go, outside the timings (moto keeps them in memory)
            if site == "local":
                shutil.rmtree(sites[site](r), ignore_errors=True)
            else:
                fs.rm(sites[site](r), recursive=True)
        print(f"round {r + 1}: " + ", ".join(f"{site} {step} {runs[site][step][-1]:.2f} s" for step in runs["local"]
                                              for site in order), flush=True)
    ratios = {step: [l / b for l, b in zip(runs["local"][step], runs["bucket"][step])] for step in runs["local"]}
    tokens = args.prompts * args.length
    res = {
        "machine": machine(),
        "model": "llama-50m (58M parameters, d = 512, 9 stored layers, float32)",
        "prompts": args.prompts, "length": args.length, "tokens": tokens, "rounds": args.rounds,
        "hidden_raw_bytes": nbytes, "hidden_stored_bytes": stored,
        "seconds": runs,
        "bucket_over_local_throughput": ratios,
        "median_ratio": {step: statistics.median(v) for step, v in ratios.items()},
        "analyze_options": list(ANALYZE),
        "endpoint": "moto server (python -m moto.server) on 127.0.0.1, through s3fs",
        "versions": _versions(),
    }
    publish(res, "bucket-cpu", render(res), "bucket", args.update_docs)
    return res


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("s3fs", "moto", "zarr")}


def render(r: dict) -> str:
    med = {site: {step: statistics.median(v) for step, v in steps.items()} for site, steps in r["seconds"].items()}
    gib = r["hidden_raw_bytes"] / 2**30
    cores = r["machine"]["cores"]
    rows = [
        ("capture (model loaded once; store created, every unit written)", "capture",
         lambda s: f"{r['tokens'] / s:,.0f} tok/s"),
        ("read the whole `hidden` array through zarr (fresh process, decoded, checksums checked)", "read",
         lambda s: f"{gib / s:.2f} GiB/s"),
        (f"`spinal analyze {' '.join(r['analyze_options'])}` (fresh process, one worker per core)", "analyze",
         lambda s: f"{r['tokens'] / s:,.0f} tok/s"),
    ]
    lines = [f"Stores in a bucket, {r['model']}, {r['prompts']} prompts × {r['length']} tokens "
             f"({gib * 1024:,.0f} MiB of activations raw, {r['hidden_stored_bytes'] / 2**20:,.0f} MiB stored), "
             f"{cores} cores (`python benchmarks/bench_bucket.py`); bucket = {r['endpoint']} "
             f"(s3fs {r['versions']['s3fs']}, moto {r['versions']['moto']}):", "",
             "| what | local disk: median s | local rate | bucket: median s | bucket rate | "
             "**bucket / local throughput** (median of rounds) | per round |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, step, rate in rows:
        lo, bu = med["local"][step], med["bucket"][step]
        per = ", ".join(f"{x:.2f}" for x in r["bucket_over_local_throughput"][step])
        lines.append(f"| {name} | {lo:.2f} | {rate(lo)} | {bu:.2f} | {rate(bu)} | "
                     f"**{r['median_ratio'][step]:.2f}** | {per} |")
    lines += ["", f"{r['rounds']} rounds, the local folder and the bucket back to back in each (which goes first "
              "alternates); the ratio is taken within a round. moto is an in-memory Python server sharing these "
              f"{cores} cores with SPINAL, so these ratios are a floor for a real S3 endpoint, not an estimate of one."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
