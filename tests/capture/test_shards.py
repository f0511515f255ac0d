"""SPINAL's shard writer writes the very bytes zarr's own writer writes, for every codec and dtype; in parallel
threads as in one; a failed write leaves no torn or temporary file; stores it cannot lay out go through zarr."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from spinal.codecs import CODECS
from spinal.create import create_store
from spinal.layout import plan_layout
from spinal.lens import LensSpec
from spinal.shards import ShardWriter
from spinal.store import Store

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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_the_shard_files_are_byte_identical_to_zarrs_own(tmp_path, codec, dtype):
    block = _block(dtype)
    ours, theirs = _store(str(tmp_path / "ours.zarr"), dtype, codec), _store(str(tmp_path / "zarr.zarr"), dtype, codec)
    assert ours.shard_writer is not None
    ours.shard_writer.write_block(0, block, None)
    theirs.hidden.with_config({"write_empty_chunks": True})[...] = block  # zarr's own write pipeline
    mine, want = _files(tmp_path / "ours.zarr" / "hidden"), _files(tmp_path / "zarr.zarr" / "hidden")
    assert len(want) == 1 + N_LAYER * N_TOK // T_SHARD  # zarr.json and every shard
    assert mine.keys() == want.keys()
    for key in want:
        assert mine[key] == want[key], key
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


def test_a_full_disk_leaves_no_torn_or_temporary_shard(tmp_path, monkeypatch):
    block = _block("float32")
    s = _store(str(tmp_path / "s.zarr"), "float32", "zstd-1")
    real, calls = os.writev, {"n": 0}

    def writev(fd, views):  # the 6th shard hits a full disk halfway through
        calls["n"] += 1
        if calls["n"] == 6:
            os.write(fd, bytes(views[0][: len(views[0]) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, views)

    monkeypatch.setattr(os, "writev", writev)
    with pytest.raises(OSError) as e:
        s.write_unit(s.units[0], block)
    assert e.value.errno == errno.ENOSPC
    names = [p.name for p in (tmp_path / "s.zarr" / "hidden").rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".partial")]
    assert len(names) == 1 + 5  # zarr.json and the 5 whole shards written before the disk filled
    assert not Store.open(str(tmp_path / "s.zarr")).done().any()  # the unit is not marked done: resume redoes it
    monkeypatch.setattr(os, "writev", real)
    s.write_unit(s.units[0], block)
    assert np.array_equal(Store.open(str(tmp_path / "s.zarr")).hidden[...], block)


def test_short_writes_are_continued(tmp_path, monkeypatch):
    """A write(2) may write less than asked; the rest follows, and the file is whole."""
    block = _block("bfloat16")
    s = _store(str(tmp_path / "s.zarr"), "bfloat16", "zstd-1")
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, views: real(fd, [views[0][: max(1, len(views[0]) // 3)]]))
    s.write_unit(s.units[0], block)
    assert np.array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "hidden"), mode="r")[...], block)


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
