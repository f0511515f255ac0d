"""Whole shards of ``hidden`` encoded and written in parallel threads, byte for byte as zarr's own writer lays them out.

A unit owns whole shards (``spinal.store.layout``), so writing one never reads anything back: each shard is its inner
chunks, each through the array's own codec objects (zarr's, so the bytes are zarr's), then a crc32c, then the
sharding codec's index (uint64 offset and length per chunk, its own crc32c) at the end. Encoding and writing are
two stages (``ShardWriter.write_block``): the caller's threads encode, threads of the writer's own hand the encoded
shards to the disk (``spinal.store.direct_io``).

Why not zarr's own write pipeline: its copies and per-chunk Python step keep it well below the codec's speed, while
the codec and checksum calls here release the GIL and scale with threads, and a writer thread asleep on the disk no
longer idles an encoding core (measured in docs/benchmarks.md, "Store writes").

Plain zarr reads what this writes; ``tests/capture/test_shards.py`` checks the files are byte-identical to zarr's
for every codec and dtype. Any layout this does not know (another index location, a chunk codec other than
bytes → … → crc32c) is written by zarr itself (``ShardWriter.for_array`` returns None).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from spinal.store import direct_io

MIN_IO_THREADS = 2  # one O_DIRECT write at a time kept two encoders waiting on this VM's disk (docs/benchmarks.md, "Store writes")


def _crc(data) -> bytes:
    """The crc32c codec's 4 bytes: the checksum of ``data``, little-endian (zarr v3 spec).

    The ``crc32c`` package, not ``google_crc32c`` (zarr's): the same checksum, but it releases the GIL, so writer
    threads checksum in parallel (two threads on 64 MiB buffers: 0.5× linear with google_crc32c, 0.8–0.98× here).
    """
    return int(crc32c.crc32c(data)).to_bytes(4, "little")


@dataclass(frozen=True)
class ShardWriter:
    """How to encode and place the shards of one array whose shards are (1, t_shard, dim) of (1, t_chunk, dim) chunks."""

    array: object  # zarr.Array
    middle: tuple  # the bytes-to-bytes codecs between the raw bytes and the crc32c (zarr codec objects)
    chunk_spec: object  # zarr ArraySpec of one inner chunk (what the codecs' encode takes)
    t_chunk: int
    t_shard: int
    folder: Path | None  # the array's folder for a local store; None: the shard goes through zarr's store API

    @classmethod
    def for_array(cls, array) -> "ShardWriter | None":
        """The writer for ``array``, or None when its layout is not the one this module writes."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation
        from zarr.storage import LocalStore

        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or array.ndim != 3:
            return None
        sharding = codecs[0]
        inner, index = list(sharding.codecs), list(sharding.index_codecs)
        shard_shape, chunk_shape = tuple(array.shards), tuple(sharding.chunk_shape)
        dtype = array.dtype
        little = dtype.byteorder == "<" or dtype.itemsize == 1 or (dtype.byteorder == "=" and sys.byteorder == "little")
        known = (
            sharding.index_location == ShardingCodecIndexLocation.end
            and len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
            and len(inner) >= 2 and isinstance(inner[0], BytesCodec) and isinstance(inner[-1], Crc32cCodec)
            and shard_shape[0] == chunk_shape[0] == 1 and shard_shape[2] == chunk_shape[2] == array.shape[2]
            and shard_shape[1] % chunk_shape[1] == 0 and little
        )
        if not known:
            return None
        from zarr.core.array_spec import ArrayConfig
        from zarr.core.buffer import default_buffer_prototype

        shard_spec = array.metadata.get_chunk_spec((0, 0, 0), ArrayConfig(order="C", write_empty_chunks=True),
                                                   default_buffer_prototype())
        spec = sharding._get_chunk_spec(shard_spec)
        store = array.store_path.store
        folder = Path(store.root) / array.store_path.path if isinstance(store, LocalStore) else None
        return cls(array, tuple(inner[1:-1]), spec, chunk_shape[1], shard_shape[1], folder)

    def encode_shard(self, shard: np.ndarray) -> list:
        """(t_shard, dim) C-contiguous -> the shard's bytes as a list of buffers, in file order."""
        from zarr.core.buffer import default_buffer_prototype

        proto = default_buffer_prototype().buffer
        pieces, index = [], np.empty((self.t_shard // self.t_chunk, 2), dtype="<u8")
        offset = 0
        for i, a in enumerate(range(0, self.t_shard, self.t_chunk)):
            raw = np.ascontiguousarray(shard[a : a + self.t_chunk]).view(np.uint8).reshape(-1)  # the bytes codec
            if self.middle:
                data = proto.from_array_like(raw)
                for codec in self.middle:
                    data = codec._encode_sync(data, self.chunk_spec)
                raw = data.as_numpy_array()
            n = raw.nbytes + 4
            pieces += [raw, _crc(raw)]
            index[i] = (offset, n)
            offset += n
        index_bytes = index.tobytes()
        return [*pieces, index_bytes, _crc(index_bytes)]

    def key(self, layer_index: int, shard_index: int) -> str:
        return self.array.metadata.encode_chunk_key((layer_index, shard_index, 0))

    def put(self, layer_index: int, shard_index: int, pieces: list, direct: bool = True) -> None:
        """Write one encoded shard (``encode_shard``'s pieces) to its file, or through zarr's store API."""
        key = self.key(layer_index, shard_index)
        if self.folder is not None:
            direct_io.write_file(self.folder / key, pieces, direct)
            return
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        sp = self.array.store_path
        data = default_buffer_prototype().buffer.from_bytes(b"".join(pieces))
        sync(sp.store.set(f"{sp.path}/{key}" if sp.path else key, data))

    def write_block(self, token_start: int, block: np.ndarray, pool: Executor | None, direct: bool = True) -> None:
        """Write ``block`` (layer, tokens, dim), whose tokens start at a shard boundary and fill whole shards
        (``direct``: local shards with ``O_DIRECT`` where the file system takes it).

        Two stages: ``pool``'s threads (None: this thread) encode shards, and as many threads of their own (at
        least ``MIN_IO_THREADS``) write them. A thread that writes with ``O_DIRECT`` sleeps until the disk has the
        bytes, so writes in the encoding threads left their cores idle for that time (docs/benchmarks.md, "Store writes");
        here the encoders go on with the next shards meanwhile. At most ``encoders + 2 × writers`` encoded shards
        wait in memory. After the first error no further shard is started; the call returns (or raises that
        error) only once every shard started is written or has failed, so a unit is never marked done over a
        missing shard.
        """
        jobs = self._jobs(token_start, block)
        encoders = 1 if pool is None else getattr(pool, "_max_workers", os.cpu_count() or 1)
        writers = max(MIN_IO_THREADS, encoders)  # they sleep on the disk: as many as encoders keep it busy
        with ThreadPoolExecutor(writers, thread_name_prefix="spinal-io") as io:
            stages = _Stages(self, io, encoders + 2 * writers, direct)
            writes, error = stages.encode_here(jobs) if pool is None else stages.encode_in(pool, jobs)
            for f in writes:  # every shard finishes (or fails) before the unit can be marked done
                try:
                    f.result()
                except BaseException as e:  # noqa: BLE001
                    error = error or e
        if error is not None:
            raise error

    def _jobs(self, token_start: int, block: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """(layer index, shard index, shard) of every shard of ``block``, refused unless it is whole shards."""
        n_layer, n_tok, _ = block.shape
        if token_start % self.t_shard or n_tok % self.t_shard:
            raise ValueError(f"tokens {token_start}+{n_tok} are not whole shards of {self.t_shard}")
        first = token_start // self.t_shard
        return [(li, first + s, block[li, s * self.t_shard : (s + 1) * self.t_shard])
                for li in range(n_layer) for s in range(n_tok // self.t_shard)]


class _Stages:
    """One ``write_block`` call's two stages: each shard encoded in the caller's threads goes to a writer thread
    of ``io``; at most ``slots`` encoded shards wait in memory, and after the first error no further shard starts."""

    def __init__(self, writer: ShardWriter, io: Executor, slots: int, direct: bool):
        self.writer, self.io, self.direct = writer, io, direct
        self.slots = threading.Semaphore(slots)  # encoded shards in memory, not yet written
        self.failed = threading.Event()

    def write(self, li: int, s: int, pieces: list) -> None:
        try:
            if not self.failed.is_set():
                self.writer.put(li, s, pieces, self.direct)
        except BaseException:
            self.failed.set()
            raise
        finally:
            self.slots.release()

    def encode(self, li: int, s: int, shard: np.ndarray) -> Future | None:
        """Encode one shard and hand it to a writer; None (nothing started) once a shard has failed."""
        self.slots.acquire()
        if self.failed.is_set():
            self.slots.release()
            return None
        try:
            return self.io.submit(self.write, li, s, self.writer.encode_shard(shard))
        except BaseException:
            self.failed.set()
            self.slots.release()
            raise

    def encode_here(self, jobs: list) -> tuple[list[Future], BaseException | None]:
        """Encode the shards in this thread, in order, up to the first error; the writes started, and that error."""
        writes = []
        for job in jobs:
            try:
                write_future = self.encode(*job)
            except BaseException as e:  # noqa: BLE001 - raised by write_block, once every write has stopped
                return writes, e
            if write_future is None:  # a write failed: no further shard
                break
            writes.append(write_future)
        return writes, None

    def encode_in(self, pool: Executor, jobs: list) -> tuple[list[Future], BaseException | None]:
        """Encode the shards in ``pool``'s threads; the writes started, and the first error."""
        error, writes = None, []
        for f in [pool.submit(self.encode, *job) for job in jobs]:
            try:
                if (write_future := f.result()) is not None:
                    writes.append(write_future)
            except BaseException as e:  # noqa: BLE001 - raised by write_block, once every write has stopped
                error = error or e
        return writes, error
