"""SPINAL's shard writer writes the very bytes zarr's own writer writes, for every codec and dtype, with O_DIRECT
and through the page cache; in parallel threads as in one; a file system that refuses O_DIRECT gets buffered
writes; a failed write or encode leaves no torn or temporary file and the unit undone; encoding runs ahead of slow
writes within a fixed number of shards in memory; stores it cannot lay out go through zarr."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from spinal.store.codecs import CODECS
from spinal.store.create import create_store
from spinal.store.layout import plan_layout
from spinal.lens import LensSpec
from spinal.store import direct_io, shards
from spinal.store.shards import ShardWriter
from spinal.store.contract import Store

N_LAYER, N_TOK, DIM, T_CHUNK, T_SHARD = 3, 512, 48, 32, 128  # 4 chunks per shard, 4 shards per layer


def _block(dtype: str, seed: int = 0) -> np.ndarray:
    """Activation-like values (heavy-ish tails, a few large coordinates), in storage dtype; the last 40 tokens are
    padding (zeros), as a capture leaves them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_LAYER, N_TOK, DIM)).astype(np.float32) * np.linspace(0.1, 30, DIM, dtype=np.float32)
    x[:, -40:] = 0
    return x if dtype == "float32" else (x.view(np.uint32) >> 16).astype(np.uint16)


def _store(path: str, dtype: str, codec: str) -> Store:
    layout = plan_layout([np.zeros(N_TOK, np.int64)], [list(range(N_TOK))], t_chunk=T_CHUNK, t_shard=T_SHARD,
                         unit_tokens=N_TOK)
    return create_store(path, layout=layout, layers=list(range(N_LAYER)), dim=DIM, dtype=dtype,
                        sequences={"prompt_id": np.array(["p"], dtype=object)}, lens_arrays={},
                        lens_spec=LensSpec(norm="none"), meta={}, codec=codec)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _takes_o_direct(folder: Path) -> bool:
    """Whether the file system under ``folder`` opens files with O_DIRECT (ext4, xfs: yes; tmpfs: no)."""
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    os.unlink(folder / "probe")
    return True


@pytest.fixture
def ways(monkeypatch) -> list[str]:
    """How each shard file was written ("direct" or "buffered"), in order."""
    out, real = [], direct_io.write_file

    def recorded(path, pieces, direct=True):
        out.append(real(path, pieces, direct))
        return out[-1]

    monkeypatch.setattr(direct_io, "write_file", recorded)
    return out


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_the_shard_files_are_byte_identical_to_zarrs_own(tmp_path, codec, dtype, direct, ways):
    block = _block(dtype)
    ours, theirs = _store(str(tmp_path / "ours.zarr"), dtype, codec), _store(str(tmp_path / "zarr.zarr"), dtype, codec)
    assert ours.shard_writer is not None
    ours.shard_writer.write_block(0, block, None, direct)
    theirs.hidden.with_config({"write_empty_chunks": True})[...] = block  # zarr's own write pipeline
    mine, want = _files(tmp_path / "ours.zarr" / "hidden"), _files(tmp_path / "zarr.zarr" / "hidden")
    assert len(want) == 1 + N_LAYER * N_TOK // T_SHARD  # zarr.json and every shard
    assert mine.keys() == want.keys()
    for key in want:
        assert mine[key] == want[key], key
    used = "direct" if direct and _takes_o_direct(tmp_path) else "buffered"
    assert ways == [used] * (N_LAYER * N_TOK // T_SHARD)
    assert any(len(v) % direct_io.ALIGN for k, v in mine.items() if k != "zarr.json")  # O_DIRECT's padding cut off
    plain = zarr.open_array(str(tmp_path / "ours.zarr" / "hidden"), mode="r")
    assert np.array_equal(plain[...], block)


def test_threads_write_the_same_store_as_one_thread(tmp_path):
    block = _block("float32", seed=3)
    serial, parallel = _store(str(tmp_path / "a.zarr"), "float32", "zstd-1"), _store(str(tmp_path / "b.zarr"),
                                                                                    "float32", "zstd-1")
    units = serial.units
    assert len(units) == 1
    serial.write_unit(units[0], block)
    with ThreadPoolExecutor(4) as pool:
        parallel.write_unit(units[0], block, pool)
    assert _files(tmp_path / "a.zarr" / "hidden") == _files(tmp_path / "b.zarr" / "hidden")
    assert np.array_equal(Store.open(str(tmp_path / "b.zarr")).hidden[...], block)
    assert Store.open(str(tmp_path / "b.zarr")).done().all()


def test_a_view_of_a_larger_buffer_is_written_as_its_values(tmp_path):
    """Capture fills a reused buffer and hands over a view of its first tokens (not contiguous across layers)."""
    big = np.zeros((N_LAYER, N_TOK + 64, DIM), dtype=np.float32)
    big[:, :N_TOK] = _block("float32", seed=5)
    view = big[:, :N_TOK]
    assert not view.flags.c_contiguous
    s = _store(str(tmp_path / "v.zarr"), "float32", "crc32c")
    s.write_unit(s.units[0], view)
    assert np.array_equal(s.hidden[...], view)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_a_full_disk_leaves_no_torn_or_temporary_shard(tmp_path, monkeypatch, direct):
    block = _block("float32")
    want = _store(str(tmp_path / "want.zarr"), "float32", "zstd-1")
    want.write_unit(want.units[0], block, None, direct)
    whole = _files(tmp_path / "want.zarr" / "hidden")
    s = _store(str(tmp_path / "s.zarr"), "float32", "zstd-1")
    name = "write" if direct and _takes_o_direct(tmp_path) else "writev"  # the call each path writes with
    real, calls = getattr(os, name), {"n": 0}

    def failing(fd, data):  # the 6th write call hits a full disk halfway through (a block boundary for O_DIRECT)
        calls["n"] += 1
        if calls["n"] == 6:
            real(fd, data[: direct_io.ALIGN] if name == "write" else [bytes(data[0][: len(data[0]) // 2])])
            raise OSError(errno.ENOSPC, "No space left on device")
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")  # a full disk stays full
        return real(fd, data)

    monkeypatch.setattr(os, name, failing)
    with pytest.raises(OSError) as e:
        s.write_unit(s.units[0], block, None, direct)
    assert e.value.errno == errno.ENOSPC
    got = _files(tmp_path / "s.zarr" / "hidden")
    assert not [n for n in got if n.endswith(".partial")]
    shards_left = {k: v for k, v in got.items() if k != "zarr.json"}
    assert len(shards_left) == 5  # the 5 whole shards written before the disk filled, whatever thread wrote them
    assert all(v == whole[k] for k, v in shards_left.items())  # each one whole
    # after the first failure no further shard was started: at most the writers already in flight tried
    assert calls["n"] <= 6 + shards.MIN_IO_THREADS
    assert not Store.open(str(tmp_path / "s.zarr")).done().any()  # the unit is not marked done: resume redoes it
    monkeypatch.setattr(os, name, real)
    s.write_unit(s.units[0], block, None, direct)
    assert np.array_equal(Store.open(str(tmp_path / "s.zarr")).hidden[...], block)


def test_short_writes_are_continued(tmp_path, monkeypatch):
    """A write(2) may write less than asked; the rest follows, and the file is whole."""
    block = _block("bfloat16")
    s = _store(str(tmp_path / "s.zarr"), "bfloat16", "zstd-1")
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, views: real(fd, [views[0][: max(1, len(views[0]) // 3)]]))
    s.write_unit(s.units[0], block, None, direct=False)
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "hidden"), mode="r")[...], block)


def test_short_o_direct_writes_are_continued(tmp_path, monkeypatch, ways):
    """An O_DIRECT write(2) may stop at any block; the rest follows from there, and the file is whole."""
    if not _takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT (the buffered path is tested above)")
    block = _block("float32", seed=2)
    s = _store(str(tmp_path / "s.zarr"), "float32", "crc32c")
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[: direct_io.ALIGN]))  # one block per call
    s.write_unit(s.units[0], block)
    assert set(ways) == {"direct"}
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "hidden"), mode="r")[...], block)


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_that_refuses_o_direct_gets_buffered_writes(tmp_path, monkeypatch, ways, refused_at):
    """tmpfs refuses O_DIRECT at open(2), some FUSE file systems at the first write(2): either way the same files."""
    block = _block("float32", seed=4)
    want = _store(str(tmp_path / "want.zarr"), "float32", "zstd-1")
    want.write_unit(want.units[0], block, None, direct=False)
    real_open, real_write, direct_fds = os.open, os.write, set()

    def fake_open(path, flags, *mode):
        if flags & os.O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags & ~os.O_DIRECT, *mode)  # the flag dropped: this test's file system may lack it
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in direct_fds:
            direct_fds.discard(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    s = _store(str(tmp_path / "s.zarr"), "float32", "zstd-1")
    ways.clear()
    s.write_unit(s.units[0], block)
    assert ways == ["buffered"] * (N_LAYER * N_TOK // T_SHARD)
    assert _files(tmp_path / "s.zarr" / "hidden") == _files(tmp_path / "want.zarr" / "hidden")
    assert not [p for p in (tmp_path / "s.zarr").rglob("*.partial")]


def test_an_fsspec_store_is_written_through_zarrs_store_api(tmp_path):
    block = _block("float32", seed=7)
    url = f"file://{tmp_path / 'remote.zarr'}"
    s = _store(url, "float32", "zstd-1")
    assert s.shard_writer is not None and s.shard_writer.folder is None  # not a LocalStore: no direct file writes
    with ThreadPoolExecutor(2) as pool:
        s.write_unit(s.units[0], block, pool)
    local = _store(str(tmp_path / "local.zarr"), "float32", "zstd-1")
    local.write_unit(local.units[0], block)
    assert _files(tmp_path / "remote.zarr" / "hidden") == _files(tmp_path / "local.zarr" / "hidden")


def test_a_layout_it_does_not_know_is_left_to_zarr(tmp_path):
    a = zarr.create_array(str(tmp_path / "x.zarr"), shape=(2, 64, 8), chunks=(1, 16, 8), shards=(1, 32, 8),
                          dtype="float32", serializer=zarr.codecs.BytesCodec(),
                          compressors=[zarr.codecs.ZstdCodec(level=1)])  # no crc32c
    assert ShardWriter.for_array(a) is None
    b = zarr.create_array(str(tmp_path / "y.zarr"), shape=(2, 64, 8), chunks=(1, 16, 8), dtype="float32")
    assert ShardWriter.for_array(b) is None  # not sharded


@pytest.mark.parametrize("encoders", [1, 3])
def test_encoding_runs_ahead_of_slow_writes_within_its_memory_bound(tmp_path, monkeypatch, encoders):
    """Encoders go on while shards are being written (the point of the writer threads), but no more than
    encoders + 2 × writers encoded shards ever wait in memory, however slow the disk."""
    import threading
    import time

    block = _block("float32", seed=8)
    s = _store(str(tmp_path / "s.zarr"), "float32", "zstd-1")
    lock, state = threading.Lock(), {"waiting": 0, "most": 0, "encoded": 0}
    real_encode, real_write = ShardWriter.encode_shard, direct_io.write_file

    def encode(self, shard):
        pieces = real_encode(self, shard)
        with lock:
            state["waiting"] += 1
            state["encoded"] += 1
            state["most"] = max(state["most"], state["waiting"])
        return pieces

    def slow_write(path, pieces, direct=True):
        time.sleep(0.02)  # a slow disk
        how = real_write(path, pieces, direct)
        with lock:
            state["waiting"] -= 1
        return how

    monkeypatch.setattr(ShardWriter, "encode_shard", encode)
    monkeypatch.setattr(direct_io, "write_file", slow_write)
    pool = ThreadPoolExecutor(encoders) if encoders > 1 else None
    try:
        s.write_unit(s.units[0], block, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    writers = max(shards.MIN_IO_THREADS, encoders)
    assert state["encoded"] == N_LAYER * N_TOK // T_SHARD and state["waiting"] == 0
    assert 2 <= state["most"] <= encoders + 2 * writers, state
    assert np.array_equal(Store.open(str(tmp_path / "s.zarr")).hidden[...], block)


def test_an_encoder_error_stops_the_unit_and_leaves_it_undone(tmp_path, monkeypatch):
    block = _block("float32", seed=9)
    s = _store(str(tmp_path / "s.zarr"), "float32", "zstd-1")
    real_encode, calls = ShardWriter.encode_shard, {"n": 0}

    def failing(self, shard):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("out of memory in the codec")
        return real_encode(self, shard)

    monkeypatch.setattr(ShardWriter, "encode_shard", failing)
    with ThreadPoolExecutor(2) as pool, pytest.raises(MemoryError, match="out of memory in the codec"):
        s.write_unit(s.units[0], block, pool)
    assert calls["n"] < N_LAYER * N_TOK // T_SHARD  # the shards after the error were not encoded
    assert not Store.open(str(tmp_path / "s.zarr")).done().any()
    assert not list((tmp_path / "s.zarr").rglob("*.partial"))
    monkeypatch.setattr(ShardWriter, "encode_shard", real_encode)
    s.write_unit(s.units[0], block)  # a retry (resume) writes the whole unit
    assert np.array_equal(Store.open(str(tmp_path / "s.zarr")).hidden[...], block)
