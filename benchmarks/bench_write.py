"""Store write throughput on real activations: each codec's ratio and single-thread speed, and the production
writer's scaling with threads, beside the physical floor (memcpy, a plain file write of the same bytes).

    .venv/bin/python benchmarks/bench_write.py [--store out/smollm2-dpo/stores/base.zarr] [--write-rates]
        [--update-docs]
    .venv/bin/python benchmarks/bench_write.py --stages     # where one writer thread's time goes

The activations are a real model's: one work unit of a SmolLM2-135M-Instruct store (float32, all 31 layers;
made by `spinal run configs/smollm2-dpo.toml`, or any store given with --store), and the same values rounded to
bfloat16 (what a GPU capture of a bf16 checkpoint stores). Random numbers would not do: their mantissas and
exponents compress differently.

- Codec table: every codec of spinal/store/codecs.py on the store's own chunks, one thread, through numcodecs (what
  zarr calls): compressed/raw, encode and decode MB/s of raw bytes, the crc32c included.
- Writer table: `Store.write_unit` (the production path: spinal/store/shards.py encodes each shard with the array's
  own codecs in a pool of n threads, as `capture --write-threads n` does, and writes it with O_DIRECT from
  threads of its own) writing the unit 3 times into a fresh store (a capture's store grows: new files), beside
  zarr's own write pipeline on the same units (`array[...] = block`, zarr's `threading.max_workers` = n) and
  SPINAL's writer through the page cache (`--no-direct-io`): GiB/s of raw bytes, best of 3 (SPINAL's: of 6).
  SPINAL's writer runs at 1 … cores threads in one process, each count just after the codec alone at the same
  thread count on the same chunks, the counts back to back in each of 6 repetitions (order rotated). From each
  repetition: per core = GiB per CPU-second (user + system of every thread) at 1 thread; per core / codec =
  that over the codec's own GiB per CPU-second; scaling = wall GiB/s at all cores / (cores × per core); the
  table gives their medians. Zarr's and the page-cache runs take a fresh process per thread count (zarr's
  thread pool is fixed per process).
- ``--write-rates``: store the default codec's per-core write rate in cluster/planner/write_rates.json, which the planner
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
RATES = ROOT / "cluster" / "planner" / "write_rates.json"
DTYPES = ("float32", "bfloat16")


def real_block(store_path: str, tokens: int) -> np.ndarray:
    """(layer, tokens, dim) float32: a real store's valid tokens, every layer, repeated in order to fill ``tokens``
    (one default work unit; no padding rows, which compress to nothing)."""
    from spinal.store.contract import Store

    s = Store.open(store_path)
    valid = np.flatnonzero(s.group["tokens/sequence"][:] >= 0)
    block = np.asarray(s.hidden.oindex[:, valid, :]).astype(np.float32, copy=False)
    return np.ascontiguousarray(block[:, np.arange(tokens) % valid.size, :])


def as_stored(block: np.ndarray, dtype: str) -> np.ndarray:
    """The block in storage dtype: float32 as is; bfloat16 rounded to nearest even, stored as uint16."""
    if dtype == "float32":
        return block
    import torch

    from spinal.store.contract import encode

    return encode(torch.from_numpy(block).to(torch.bfloat16), "bfloat16")


def _numcodecs(name: str, itemsize: int) -> list:
    """numcodecs objects equal to spinal.store.codecs' zarr ones (zarr's codecs call these)."""
    import numcodecs

    from spinal.store.codecs import CODECS

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

    from spinal.store.codecs import CODECS

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
import json, os, sys, time, tempfile, shutil, numpy as np, zarr
from concurrent.futures import ThreadPoolExecutor
zarr.config.set({{"threading.max_workers": {threads}[0]}})
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/benchmarks")
import numcodecs
from bench_write import _numcodecs
from spinal.store.create import create_store
from spinal.store.layout import plan_layout
from spinal.lens import LensSpec
from spinal.store.contract import Store
numcodecs.blosc.set_nthreads(1)  # one thread per codec call, as the writer's threads call it
numcodecs.blosc.use_threads = False
block = np.load({npy!r}, mmap_mode="r")
n_layer, n_tok, dim = block.shape
units = {units}
counts = {threads}
chain = _numcodecs({codec!r}, block.itemsize)
chunks = [np.ascontiguousarray(block[l, a : a + {t_chunk}]) for l in range(n_layer) for a in range(0, n_tok, {t_chunk})]

def encode(c):
    for codec in chain:
        c = codec.encode(c)
    return c

def cpu():
    t = os.times()
    return t.user + t.system  # every thread of this process

out = {{k: {{n: [] for n in counts}} for k in ("wall", "cpu", "codec_wall", "codec_cpu")}}
for rep in range({reps}):
    for n in counts[rep % len(counts):] + counts[:rep % len(counts)]:  # thread counts back to back, order rotated
        pool = ThreadPoolExecutor(n) if n > 1 else None
        if {codec_too}:  # the codec alone on the unit's chunks, n threads, just before the writer
            t, c = time.perf_counter(), cpu()
            for _ in range(units):  # each result dropped at once: the codec's steady state, allocations reused
                for _ in (pool.map(encode, chunks) if pool else map(encode, chunks)):
                    pass
            out["codec_wall"][n].append(time.perf_counter() - t)
            out["codec_cpu"][n].append(cpu() - c)
        d = tempfile.mkdtemp(dir={tmp!r})
        layout = plan_layout([np.zeros(n_tok, np.int64)] * units, [list(range(n_tok))] * units, t_chunk={t_chunk},
                             t_shard={t_shard}, unit_tokens=n_tok)
        s = create_store(d + "/s.zarr", layout=layout, layers=list(range(n_layer)), dim=dim, dtype={dtype!r},
                         sequences={{"prompt_id": np.array(["p"] * units, dtype=object)}}, lens_arrays={{}},
                         lens_spec=LensSpec(norm="none"), meta={{}}, codec={codec!r})
        unit = layout.units[0]
        padded = np.zeros((n_layer, unit.token_stop - unit.token_start, dim), block.dtype)  # as a capture pads it
        padded[:, :n_tok] = block
        t, c = time.perf_counter(), cpu()
        for u in layout.units:  # the store grows unit by unit, as a capture writes it
            if {how!r} == "spinal":
                s.write_unit(u, padded, pool, direct={direct})
            else:
                s.hidden.with_config({{"write_empty_chunks": True}})[:, u.token_start : u.token_stop, :] = padded
        out["wall"][n].append(time.perf_counter() - t)
        out["cpu"][n].append(cpu() - c)
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(d)
        time.sleep(1)
print(json.dumps([out, int(padded.nbytes) * units]))
"""


WRITERS = ("spinal", "zarr")


UNITS = 3  # units per timed store: a capture's store grows, and new files need page-cache pages a rewrite would not


def writer_times(npy: Path, dtype: str, codec: str, threads: list[int], t_chunk: int, t_shard: int, tmp: str,
                 how: str = "spinal", direct: bool = True, reps: int = 3, codec_too: bool = False
                 ) -> tuple[dict[str, dict[int, list[float]]], int]:
    """One fresh process timing the writer at each thread count of ``threads`` ``reps`` times, the counts back to
    back within a repetition: {"wall"|"cpu": {threads: [seconds per repetition]}} (cpu: user + system seconds of
    every thread of the process), with ``codec_too`` also "codec_wall"/"codec_cpu", the codec alone on the same
    chunks at the same thread count just before the writer; and the bytes written each time."""
    code = WRITER.format(threads=list(threads), root=str(ROOT), npy=str(npy), tmp=tmp, t_chunk=t_chunk,
                         t_shard=t_shard, dtype=dtype, codec=codec, how=how, direct=direct, units=UNITS, reps=reps,
                         codec_too=codec_too)
    out, _ = run_child(code)
    times, nbytes = json.loads(out)
    return {k: {int(n): t for n, t in v.items()} for k, v in times.items()}, nbytes


def writer_gib_s(npy: Path, dtype: str, codec: str, threads: int, t_chunk: int, t_shard: int, tmp: str,
                 how: str = "spinal", direct: bool = True) -> float:
    times, nbytes = writer_times(npy, dtype, codec, [threads], t_chunk, t_shard, tmp, how, direct)
    return nbytes / min(times["wall"][threads]) / 2**30


def spinal_scaling(npy: Path, dtype: str, codec: str, cores: int, t_chunk: int, t_shard: int, tmp: str) -> dict:
    """SPINAL's writer and the codec alone at 1 … cores threads in one process, back to back (thread counts in
    rotated order) in each of ``PAIRED_REPS`` repetitions. Every figure but the best rates is the median over
    repetitions of a ratio within one repetition (a shared machine's speed drifts between and within processes):

    - ``rates``: the writer's GiB/s of raw bytes per thread count (best repetition);
    - ``per_core``: the writer's GiB per CPU-second at 1 thread (user + system of all its threads: the writing
      threads' waits are not charged, their system time is);
    - ``per_core_vs_codec``: that over the codec's own GiB per CPU-second on the same chunks;
    - ``scaling``: wall GiB/s at all cores / (cores × ``per_core``), i.e. how near all cores come to that many
      single cores' worth of work (the planner's factor);
    - ``wall_ratio``: time at 1 thread / (cores × time at all cores), the older figure, which stops measuring
      scaling once one writer thread's disk waits run on another core;
    - ``codec_scaling``: the codec alone, time at 1 thread / (cores × time at all cores): this machine's own
      ceiling for work of that kind.
    """
    counts = list(range(1, cores + 1))
    t, nbytes = writer_times(npy, dtype, codec, counts, t_chunk, t_shard, tmp, reps=PAIRED_REPS, codec_too=True)
    w1, wn, c1, cn = t["wall"][1], t["wall"][cores], t["cpu"][1], t["codec_wall"][1]
    med = lambda xs: float(np.median(xs))  # noqa: E731
    gib = nbytes / 2**30
    return {"rates": {str(n): gib / min(t["wall"][n]) for n in counts},
            "per_core": med([gib / c for c in c1]),
            "per_core_vs_codec": med([cc / c for c, cc in zip(c1, t["codec_cpu"][1])]),
            "scaling": med([c / (cores * w) for c, w in zip(c1, wn)]),
            "wall_ratio": med([a / (cores * b) for a, b in zip(w1, wn)]),
            "codec_scaling": med([a / (cores * b) for a, b in zip(cn, t["codec_wall"][cores])]),
            "times": {k: {str(n): v for n, v in d.items()} for k, d in t.items()}}


PAIRED_REPS = 6  # even: each order of the thread counts runs equally often (two counts)


def floor_gib_s(stored: np.ndarray, tmp: str) -> dict:
    """memcpy, and plain writes of the same bytes as ``UNITS`` new files in the same folder, kept until the last is
    written as a store's shards are: through the page cache (write(2), no fsync; zarr does not fsync either) and
    with O_DIRECT (from one page-aligned copy, as spinal/store/direct_io.py writes)."""
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
    from spinal.store.codecs import CODECS
    from spinal.store.layout import chunk_sizes

    block = real_block(store_path, tokens)
    from spinal.store.contract import Store

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
                paired = spinal_scaling(npy, dtype, name, cores, t_chunk, t_shard, tmp)
                res["writer"][dtype][name] = paired.pop("rates")
                res["writer_scaling"][dtype][name] = paired
                res["zarr_writer"][dtype][name] = {str(n): writer_gib_s(npy, dtype, name, n, t_chunk, t_shard, tmp,
                                                                        "zarr") for n in range(1, cores + 1)}
                res["buffered_writer"][dtype][name] = {  # SPINAL's writer through the page cache (--no-direct-io)
                    str(cores): writer_gib_s(npy, dtype, name, cores, t_chunk, t_shard, tmp, "spinal", direct=False)}
    return res


def paired(res: dict, dtype: str, name: str) -> dict:
    """The paired figures of SPINAL's writer for one dtype and codec (``spinal_scaling``)."""
    return res["writer_scaling"][dtype][name]


def table(res: dict) -> str:
    cores = res["machine"]["cores"]
    lines = [f"Real activations: one {res['block_shape'][1]}-token work unit × {res['block_shape'][0]} layers × "
             f"d = {res['block_shape'][2]} of SmolLM2-135M-Instruct (`{Path(res['store']).name}`, its "
             f"{res['valid_tokens']} reply tokens in order, repeated to fill the unit); bfloat16 = the same values "
             f"rounded. One run, {cores} cores; paired columns are medians of {res['paired_reps']} within-repetition "
             "ratios.", ""]
    for dtype in DTYPES:
        fl = res["floor"][dtype]
        lines += [f"**{dtype}** (floor on this machine: memcpy {fl['memcpy']:.1f} GiB/s; {res['units_per_store']} "
                  f"new files of the unit's bytes: {fl['file_write']:.1f} GiB/s through the page cache, "
                  f"{fl['file_write_direct']:.1f} GiB/s with O_DIRECT)", "",
                  "| codec | stored / raw | encode MB/s (1 thread) | decode MB/s (1 thread) | "
                  + " | ".join(f"zarr's writer GiB/s, {n} thr" for n in range(1, cores + 1)) + " | "
                  + " | ".join(f"**SPINAL writer** GiB/s, {n} thr" for n in range(1, cores + 1))
                  + f" | SPINAL through the page cache, {cores} thr | SPINAL per core, GiB per CPU-s | "
                  f"**per core / codec** | **SPINAL scaling at {cores}** | codec alone, scaling at {cores} | "
                  f"SPINAL time 1 thr / ({cores} × time {cores} thr) |",
                  "|---|---:|---:|---:|" + "---:|" * (2 * cores) + "---:|---:|---:|---:|---:|---:|"]
        for name, c in res["codecs"][dtype].items():
            w, z, p = res["writer"][dtype][name], res["zarr_writer"][dtype][name], paired(res, dtype, name)
            lines.append(f"| {name} | {c['ratio']:.3f} | {c['encode_mb_s']:.0f} | {c['decode_mb_s']:.0f} | "
                         + " | ".join(f"{z[str(n)]:.2f}" for n in range(1, cores + 1)) + " | "
                         + " | ".join(f"**{w[str(n)]:.2f}**" for n in range(1, cores + 1))
                         + f" | {res['buffered_writer'][dtype][name][str(cores)]:.2f} | {p['per_core']:.2f}"
                         + f" | **{p['per_core_vs_codec']:.2f}** | **{p['scaling']:.0%}** | {p['codec_scaling']:.0%}"
                         + f" | {p['wall_ratio']:.0%} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def stages(store_path: str, tokens: int, dtype: str = "float32", codec: str = "zstd-1") -> None:
    """Where one writer thread's time goes, in this process: the encode alone, encode then write in the same thread
    (the writer before the stages were split), the split writer with one encoding thread, and plain O_DIRECT writes
    of new shard-sized files; wall s/GiB and CPU s/GiB (user + system, every thread), best of 3 each."""
    import shutil

    from spinal.store.create import create_store
    from spinal.store.layout import chunk_sizes, plan_layout
    from spinal.lens import LensSpec

    block = as_stored(real_block(store_path, tokens), dtype)
    n_layer, n_tok, dim = block.shape
    t_chunk, t_shard = chunk_sizes(dim, block.itemsize, n_tok)
    gib, work = block.nbytes / 2**30, ROOT / "out" / "stages"

    def fresh():  # a new store: every shard a new file, as a capture writes them
        shutil.rmtree(work, ignore_errors=True)
        layout = plan_layout([np.zeros(n_tok, np.int64)], [list(range(n_tok))], t_chunk=t_chunk, t_shard=t_shard,
                             unit_tokens=n_tok)
        return create_store(str(work / "s.zarr"), layout=layout, layers=list(range(n_layer)), dim=dim, dtype=dtype,
                            sequences={"prompt_id": np.array(["p"], dtype=object)}, lens_arrays={},
                            lens_spec=LensSpec(norm="none"), meta={}, codec=codec)

    def shards_of(s):
        return [(li, k, block[li, k * t_shard : (k + 1) * t_shard]) for li in range(n_layer)
                for k in range(n_tok // t_shard)]

    def plain_direct(s):
        size = -(-t_shard * dim * block.itemsize // 4096) * 4096
        import mmap

        buf = mmap.mmap(-1, size)
        for i in range(len(shards_of(s))):
            fd = os.open(work / f"plain{i}", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
            os.write(fd, buf)
            os.close(fd)

    def encode_only(s):
        for *_, x in shards_of(s):
            s.shard_writer.encode_shard(x)  # dropped at once: a list of them would cost fresh pages each time

    def serial(s):
        for li, k, x in shards_of(s):  # the two stages of ShardWriter.write_block, one after the other
            s.shard_writer.put(li, k, s.shard_writer.encode_shard(x))

    runs = {"encode only (ShardWriter.encode_shard)": encode_only,
            "encode, then write, in one thread": serial,
            "split: one encoding thread + writer threads": lambda s: s.shard_writer.write_block(0, block, None),
            "plain O_DIRECT writes of raw shard-sized files": plain_direct}
    print(f"{dtype} {codec}, {gib:.2f} GiB, one thread (best of 3):")
    for name, fn in runs.items():
        best = None
        for _ in range(3):
            s = fresh()
            c, t = os.times(), time.perf_counter()
            fn(s)
            wall, c2 = time.perf_counter() - t, os.times()
            row = (wall / gib, (c2.user + c2.system - c.user - c.system) / gib, (c2.system - c.system) / gib)
            best = row if best is None or row[0] < best[0] else best
        print(f"  {name:48s} {1 / best[0]:.2f} GiB/s   wall {best[0]:.2f} s/GiB   CPU {best[1]:.2f} s/GiB "
              f"(system {best[2]:.2f})")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(ROOT / "out" / "smollm2-dpo" / "stores" / "base.zarr"))
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per written unit (the capture default)")
    ap.add_argument("--update-docs", action="store_true", help="also rewrite this benchmark's table in docs/")
    ap.add_argument("--write-rates", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="print the table of the last results")
    ap.add_argument("--stages", action="store_true", help="only time one writer thread's stages (float32 zstd-1)")
    args = ap.parse_args()
    results = Path(__file__).parent / "results" / "write-cpu.json"
    if args.table_only:
        print(table(json.loads(results.read_text())))
        return
    if not Path(args.store).exists():
        raise SystemExit(f"no store at {args.store}: run `spinal run configs/smollm2-dpo.toml` first (docs/results/smollm2.md, "
                         "'A real model'), or pass --store PATH of any real-model store")
    if args.stages:
        stages(args.store, args.tokens)
        return
    t = time.perf_counter()
    res = measure(args.store, args.tokens)
    res["seconds"] = time.perf_counter() - t
    publish(res, "write-cpu", table(res), "write", args.update_docs)
    if args.write_rates:
        RATES.write_text(json.dumps(write_rates(res), indent=2) + "\n")
        print(f"wrote {RATES.relative_to(ROOT)}")


def write_rates(res: dict) -> dict:
    """Per codec and dtype: the writer's GiB per CPU-second at one thread, the scaling at all cores (the planner
    prices a replica at per core × cores × scaling), and stored/raw."""
    codecs = {}
    for name in res["codecs"]["float32"]:
        codecs[name] = {}
        for dtype in DTYPES:
            p = paired(res, dtype, name)
            codecs[name][dtype] = {"gib_s_per_core": p["per_core"], "scaling": min(1.0, p["scaling"]),
                                   "ratio": res["codecs"][dtype][name]["ratio"]}
    return {"codecs": codecs, "machine": res["machine"], "measured": time.strftime("%Y-%m-%d"),
            "command": "benchmarks/bench_write.py --write-rates", "activations": Path(res["store"]).name}


if __name__ == "__main__":
    main()
