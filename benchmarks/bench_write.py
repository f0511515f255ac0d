"""Store write throughput on real activations: each codec's ratio and single-thread speed, and the production
writer's scaling with threads, beside the physical floor (memcpy, a plain file write of the same bytes).

    .venv/bin/python benchmarks/bench_write.py [--store out/smollm2-dpo/stores/base.zarr] [--write-rates]
        [--update-readme]

The activations are a real model's: one work unit of a SmolLM2-135M-Instruct store (float32, all 31 layers;
made by `spinal run configs/smollm2-dpo.toml`, or any store given with --store), and the same values rounded to
bfloat16 (what a GPU capture of a bf16 checkpoint stores). Random numbers would not do: their mantissas and
exponents compress differently.

- Codec table: every codec of spinal/codecs.py on the store's own chunks, one thread, through numcodecs (what
  zarr calls): compressed/raw, encode and decode MB/s of raw bytes, the crc32c included.
- Writer table: `Store.write_unit` (the production path: spinal/shards.py encodes each shard with the array's
  own codecs and writes it with O_DIRECT, in a pool of n threads, as `capture --write-threads n` does) writing
  the unit 3 times into a fresh store (a capture's store grows: new files), beside zarr's own write pipeline on
  the same units (`array[...] = block`, zarr's `threading.max_workers` = n) and SPINAL's writer through the page
  cache (`--no-direct-io`): GiB/s of raw bytes, best of 3 (SPINAL's: of 4). SPINAL's writer runs at 1 … cores
  threads in one process, the thread counts back to back in each of 4 repetitions (order rotated); its scaling =
  the median over repetitions of time at 1 thread / (n × time at n threads). Zarr's and the page-cache runs take
  a fresh process per thread count (zarr's thread pool is fixed per process).
- ``--write-rates``: store the default codec's per-core write rate in cluster/write_rates.json, which the planner
  prices capture with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, machine, publish, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATES = ROOT / "cluster" / "write_rates.json"
DTYPES = ("float32", "bfloat16")


def real_block(store_path: str, tokens: int) -> np.ndarray:
    """(layer, tokens, dim) float32: a real store's valid tokens, every layer, repeated in order to fill ``tokens``
    (one default work unit; no padding rows, which compress to nothing)."""
    from spinal.store import Store

    s = Store.open(store_path)
    valid = np.flatnonzero(s.group["tokens/sequence"][:] >= 0)
    block = np.asarray(s.hidden.oindex[:, valid, :]).astype(np.float32, copy=False)
    return np.ascontiguousarray(block[:, np.arange(tokens) % valid.size, :])


def as_stored(block: np.ndarray, dtype: str) -> np.ndarray:
    """The block in storage dtype: float32 as is; bfloat16 rounded to nearest even, stored as uint16."""
    if dtype == "float32":
        return block
    import torch

    from spinal.store import encode

    return encode(torch.from_numpy(block).to(torch.bfloat16), "bfloat16")


def _numcodecs(name: str, itemsize: int) -> list:
    """numcodecs objects equal to spinal.codecs' zarr ones (zarr's codecs call these)."""
    import numcodecs

    from spinal.codecs import CODECS

    shuffles = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
    chain = []
    for cls, kw in CODECS[name][0]:
        if cls == "ZstdCodec":
            chain.append(numcodecs.Zstd(level=kw["level"]))
        else:
            chain.append(numcodecs.Blosc(cname=kw["cname"], clevel=kw["clevel"], shuffle=shuffles[kw["shuffle"]]))
    return [*chain, numcodecs.CRC32C()]


def codec_table(stored: np.ndarray, t_chunk: int) -> dict:
    """Per codec, one thread: ratio, encode and decode MB/s (raw bytes) over the block's (1, t_chunk, dim) chunks."""
    import numcodecs

    from spinal.codecs import CODECS

    numcodecs.blosc.set_nthreads(1)
    numcodecs.blosc.use_threads = False
    chunks = [np.ascontiguousarray(stored[l, a : a + t_chunk]) for l in range(stored.shape[0])
              for a in range(0, stored.shape[1] - t_chunk + 1, t_chunk)]
    raw = sum(c.nbytes for c in chunks)
    out = {}
    for name in CODECS:
        chain = _numcodecs(name, stored.itemsize)

        def enc():
            bufs = []
            for c in chunks:
                b = c
                for codec in chain:
                    b = codec.encode(b)
                bufs.append(b)
            return bufs

        encoded = enc()

        def dec():
            for b in encoded:
                for codec in reversed(chain):
                    b = codec.decode(b)

        t_enc, t_dec = best_of(enc), best_of(dec)
        size = sum(len(memoryview(b).cast("B")) for b in encoded)
        out[name] = {"ratio": size / raw, "encode_mb_s": raw / t_enc / 1e6, "decode_mb_s": raw / t_dec / 1e6}
    return out


WRITER = """
import json, sys, time, tempfile, shutil, numpy as np, zarr
from concurrent.futures import ThreadPoolExecutor
zarr.config.set({{"threading.max_workers": {threads}[0]}})
sys.path.insert(0, {root!r})
from spinal.create import create_store
from spinal.layout import plan_layout
from spinal.lens import LensSpec
from spinal.store import Store
block = np.load({npy!r}, mmap_mode="r")
n_layer, n_tok, dim = block.shape
units = {units}
counts = {threads}
times = {{n: [] for n in counts}}
for rep in range({reps}):
    for n in counts[rep % len(counts):] + counts[:rep % len(counts)]:  # thread counts back to back, order rotated
        d = tempfile.mkdtemp(dir={tmp!r})
        layout = plan_layout([np.zeros(n_tok, np.int64)] * units, [list(range(n_tok))] * units, t_chunk={t_chunk},
                             t_shard={t_shard}, unit_tokens=n_tok)
        s = create_store(d + "/s.zarr", layout=layout, layers=list(range(n_layer)), dim=dim, dtype={dtype!r},
                         sequences={{"prompt_id": np.array(["p"] * units, dtype=object)}}, lens_arrays={{}},
                         lens_spec=LensSpec(norm="none"), meta={{}}, codec={codec!r})
        unit = layout.units[0]
        padded = np.zeros((n_layer, unit.token_stop - unit.token_start, dim), block.dtype)  # as a capture pads it
        padded[:, :n_tok] = block
        pool = ThreadPoolExecutor(n) if n > 1 else None
        t = time.perf_counter()
        for u in layout.units:  # the store grows unit by unit, as a capture writes it
            if {how!r} == "spinal":
                s.write_unit(u, padded, pool, direct={direct})
            else:
                s.hidden.with_config({{"write_empty_chunks": True}})[:, u.token_start : u.token_stop, :] = padded
        times[n].append(time.perf_counter() - t)
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(d)
        time.sleep(1)
print(json.dumps([times, int(padded.nbytes) * units]))
"""


WRITERS = ("spinal", "zarr")


UNITS = 3  # units per timed store: a capture's store grows, and new files need page-cache pages a rewrite would not


def writer_times(npy: Path, dtype: str, codec: str, threads: list[int], t_chunk: int, t_shard: int, tmp: str,
                 how: str = "spinal", direct: bool = True, reps: int = 3) -> tuple[dict[int, list[float]], int]:
    """One fresh process timing the writer at each thread count of ``threads`` ``reps`` times, the counts back to
    back within a repetition: {threads: [seconds per repetition]}, and the bytes written each time."""
    code = WRITER.format(threads=list(threads), root=str(ROOT), npy=str(npy), tmp=tmp, t_chunk=t_chunk,
                         t_shard=t_shard, dtype=dtype, codec=codec, how=how, direct=direct, units=UNITS, reps=reps)
    out, _ = run_child(code)
    times, nbytes = json.loads(out)
    return {int(n): t for n, t in times.items()}, nbytes


def writer_gib_s(npy: Path, dtype: str, codec: str, threads: int, t_chunk: int, t_shard: int, tmp: str,
                 how: str = "spinal", direct: bool = True) -> float:
    times, nbytes = writer_times(npy, dtype, codec, [threads], t_chunk, t_shard, tmp, how, direct)
    return nbytes / min(times[threads]) / 2**30


def spinal_scaling(npy: Path, dtype: str, codec: str, cores: int, t_chunk: int, t_shard: int, tmp: str
                   ) -> tuple[dict[str, float], float]:
    """SPINAL's writer at 1 … cores threads in one process, the counts back to back (order rotated) in each of
    ``PAIRED_REPS`` repetitions: GiB/s per count (best repetition), and the scaling at all cores as the median over
    repetitions of the within-repetition ratio (a shared machine's speed drifts between processes)."""
    counts = list(range(1, cores + 1))
    times, nbytes = writer_times(npy, dtype, codec, counts, t_chunk, t_shard, tmp, reps=PAIRED_REPS)
    rates = {str(n): nbytes / min(times[n]) / 2**30 for n in counts}
    return rates, float(np.median([t1 / (cores * tn) for t1, tn in zip(times[1], times[cores])]))


PAIRED_REPS = 4  # even: each order of the thread counts runs equally often (two counts)


def floor_gib_s(stored: np.ndarray, tmp: str) -> dict:
    """memcpy, and plain writes of the same bytes as ``UNITS`` new files in the same folder, kept until the last is
    written as a store's shards are: through the page cache (write(2), no fsync; zarr does not fsync either) and
    with O_DIRECT (from one page-aligned copy, as spinal/shards.py writes)."""
    import mmap
    import shutil

    dst = np.empty_like(stored)
    t_copy = best_of(lambda: np.copyto(dst, stored))
    size = -(-stored.nbytes // 4096) * 4096
    aligned = mmap.mmap(-1, size)
    aligned[: stored.nbytes] = memoryview(stored).cast("B")
    folder = Path(tmp) / "plain"

    def write(direct: bool) -> float:
        folder.mkdir()
        t = time.perf_counter()
        for i in range(UNITS):
            fd = os.open(folder / str(i), os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0), 0o644)
            view, done = memoryview(aligned)[: size if direct else stored.nbytes], 0
            while done < view.nbytes:
                done += os.write(fd, view[done:])
            os.close(fd)
        dt = time.perf_counter() - t
        shutil.rmtree(folder)
        time.sleep(1)
        return dt

    t_write, t_direct = min(write(False) for _ in range(3)), min(write(True) for _ in range(3))
    total = UNITS * stored.nbytes
    return {"memcpy": stored.nbytes / t_copy / 2**30, "file_write": total / t_write / 2**30,
            "file_write_direct": total / t_direct / 2**30}


def measure(store_path: str, tokens: int) -> dict:
    from spinal.codecs import CODECS
    from spinal.layout import chunk_sizes

    block = real_block(store_path, tokens)
    from spinal.store import Store

    valid_tokens = int((Store.open(store_path).group["tokens/sequence"][:] >= 0).sum())
    cores = os.cpu_count() or 1
    res = {"benchmark": "write", "machine": machine(), "store": store_path, "block_shape": list(block.shape), "valid_tokens": valid_tokens,
           "codecs": {}, "writer": {}, "writer_scaling": {}, "zarr_writer": {}, "buffered_writer": {}, "floor": {},
           "units_per_store": UNITS, "paired_reps": PAIRED_REPS}
    with tempfile.TemporaryDirectory(dir=ROOT / "out" if (ROOT / "out").exists() else None) as tmp:
        for dtype in DTYPES:
            stored = as_stored(block, dtype)
            t_chunk, t_shard = chunk_sizes(block.shape[2], stored.itemsize, tokens)  # as a capture lays them out
            res["t_chunk"] = {**res.get("t_chunk", {}), dtype: t_chunk}
            print(f"[{dtype}] codecs, one thread …", file=sys.stderr)
            res["codecs"][dtype] = codec_table(stored, t_chunk)
            res["floor"][dtype] = floor_gib_s(stored, tmp)
            npy = Path(tmp) / f"{dtype}.npy"
            np.save(npy, stored)
            for key in ("writer", "writer_scaling", "zarr_writer", "buffered_writer"):
                res[key][dtype] = {}
            for name in CODECS:
                print(f"[{dtype}] writers {name}, 1…{cores} threads …", file=sys.stderr)
                res["writer"][dtype][name], res["writer_scaling"][dtype][name] = spinal_scaling(
                    npy, dtype, name, cores, t_chunk, t_shard, tmp)
                res["zarr_writer"][dtype][name] = {str(n): writer_gib_s(npy, dtype, name, n, t_chunk, t_shard, tmp,
                                                                        "zarr") for n in range(1, cores + 1)}
                res["buffered_writer"][dtype][name] = {  # SPINAL's writer through the page cache (--no-direct-io)
                    str(cores): writer_gib_s(npy, dtype, name, cores, t_chunk, t_shard, tmp, "spinal", direct=False)}
    return res


def scaling(res: dict, dtype: str, name: str) -> float:
    """SPINAL's writer at all cores against linear: the paired median where measured, else from the best rates."""
    paired = res.get("writer_scaling", {}).get(dtype, {}).get(name)
    if paired is not None:
        return paired
    w, cores = res["writer"][dtype][name], str(res["machine"]["cores"])
    return w[cores] / (int(cores) * w["1"])


def table(res: dict) -> str:
    cores = res["machine"]["cores"]
    lines = [f"Real activations: one {res['block_shape'][1]}-token work unit × {res['block_shape'][0]} layers × "
             f"d = {res['block_shape'][2]} of SmolLM2-135M-Instruct (`{Path(res['store']).name}`, its "
             f"{res['valid_tokens']} reply tokens in order, repeated to fill the unit); bfloat16 = the same values "
             f"rounded. One run, {cores} cores.", ""]
    for dtype in DTYPES:
        fl = res["floor"][dtype]
        lines += [f"**{dtype}** (floor on this machine: memcpy {fl['memcpy']:.1f} GiB/s; {res.get('units_per_store', 1)} "
                  f"new files of the unit's bytes: {fl['file_write']:.1f} GiB/s through the page cache, "
                  f"{fl.get('file_write_direct', float('nan')):.1f} GiB/s with O_DIRECT)", "",
                  "| codec | stored / raw | encode MB/s (1 thread) | decode MB/s (1 thread) | "
                  + " | ".join(f"zarr's writer GiB/s, {n} thr" for n in range(1, cores + 1)) + " | "
                  + " | ".join(f"**SPINAL writer** GiB/s, {n} thr" for n in range(1, cores + 1))
                  + f" | SPINAL through the page cache, {cores} thr | SPINAL scaling at {cores} | SPINAL per core / codec |",
                  "|---|---:|---:|---:|" + "---:|" * (2 * cores) + "---:|---:|---:|"]
        for name, c in res["codecs"][dtype].items():
            w, z = res["writer"][dtype][name], res["zarr_writer"][dtype][name]
            one = w["1"]
            lines.append(f"| {name} | {c['ratio']:.3f} | {c['encode_mb_s']:.0f} | {c['decode_mb_s']:.0f} | "
                         + " | ".join(f"{z[str(n)]:.2f}" for n in range(1, cores + 1)) + " | "
                         + " | ".join(f"**{w[str(n)]:.2f}**" for n in range(1, cores + 1))
                         + f" | {res.get('buffered_writer', {}).get(dtype, {}).get(name, {}).get(str(cores), float('nan')):.2f}"
                         + f" | {scaling(res, dtype, name):.0%} | {one * 2**30 / 1e6 / c['encode_mb_s']:.2f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(ROOT / "out" / "smollm2-dpo" / "stores" / "base.zarr"))
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per written unit (the capture default)")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--write-rates", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="print the table of the last results")
    args = ap.parse_args()
    results = Path(__file__).parent / "results" / "write-cpu.json"
    if args.table_only:
        print(table(json.loads(results.read_text())))
        return
    if not Path(args.store).exists():
        raise SystemExit(f"no store at {args.store}: run `spinal run configs/smollm2-dpo.toml` first (README, "
                         "'A real model'), or pass --store PATH of any real-model store")
    t = time.perf_counter()
    res = measure(args.store, args.tokens)
    res["seconds"] = time.perf_counter() - t
    publish(res, "write-cpu", table(res), "write", args.update_readme)
    if args.write_rates:
        RATES.write_text(json.dumps(write_rates(res), indent=2) + "\n")
        print(f"wrote {RATES.relative_to(ROOT)}")


def write_rates(res: dict) -> dict:
    """Per codec and dtype: one writer thread's GiB/s, the scaling at all cores, and stored/raw."""
    codecs = {}
    for name in res["codecs"]["float32"]:
        codecs[name] = {}
        for dtype in DTYPES:
            w = res["writer"][dtype][name]
            codecs[name][dtype] = {"gib_s_per_core": w["1"], "scaling": min(1.0, scaling(res, dtype, name)),
                                   "ratio": res["codecs"][dtype][name]["ratio"]}
    return {"codecs": codecs, "machine": res["machine"], "measured": time.strftime("%Y-%m-%d"),
            "command": "benchmarks/bench_write.py --write-rates", "activations": Path(res["store"]).name}


if __name__ == "__main__":
    main()
