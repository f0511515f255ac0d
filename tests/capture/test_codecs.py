"""Every store codec is lossless, checksummed and readable by plain zarr; a store's codec is recorded and kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import assert_refused, store_arrays
from spinal.capture import capture
from spinal.cli.app import app
from spinal.store.codecs import CODECS, DEFAULT_CODEC
from spinal.config import CaptureConfig
from spinal.errors import IntegrityError
from spinal.store.contract import Store

DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def reference_stores(checkpoint, tmp_path_factory):
    """One store per dtype with the default codec: what every other codec must reproduce bit for bit."""
    from conftest import PROMPTS, write_jsonl

    d = tmp_path_factory.mktemp("codec-ref")
    prompts = write_jsonl(d / "p.jsonl", PROMPTS)
    out = {}
    for dtype in DTYPES:
        out[dtype] = d / f"{dtype}.zarr"
        capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts), out=str(out[dtype]),
                              unit_tokens=16, dtype=dtype))
    return prompts, out


def _capture(checkpoint, prompts, out: Path, dtype: str, codec: str) -> Path:
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts), out=str(out), unit_tokens=16,
                          dtype=dtype, codec=codec))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec", [c for c in CODECS if c != DEFAULT_CODEC])
def test_every_codec_round_trips_bit_exactly_and_plain_zarr_reads_it(checkpoint, reference_stores, tmp_path,
                                                                        codec, dtype):
    prompts, refs = reference_stores
    out = _capture(checkpoint, prompts, tmp_path / "s.zarr", dtype, codec)
    got, want = store_arrays(out), store_arrays(refs[dtype])
    assert got.keys() == want.keys()
    for name in want:  # the stored bits (uint16 for bf16), array for array
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
    s = Store.open(str(out))
    assert s.meta["codec"] == codec and Store.open(str(refs[dtype])).meta["codec"] == DEFAULT_CODEC
    plain = zarr.open_array(str(out / "hidden"), mode="r")  # no SPINAL code: the codec chain is in zarr's metadata
    names = [type(c).__name__ for c in plain.compressors]
    assert names[-1] == "Crc32cCodec" and (len(names) == 1) == (codec == "crc32c")
    assert np.array_equal(plain[...], want["hidden"])


@pytest.mark.parametrize("codec", list(CODECS))
def test_a_flipped_byte_is_detected_under_every_codec(checkpoint, reference_stores, tmp_path, codec):
    prompts, _ = reference_stores
    out = _capture(checkpoint, prompts, tmp_path / "s.zarr", "bfloat16", codec)
    shard = out / "hidden" / "c" / "2" / "1" / "0"  # layer 2, second token shard
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit, inside the first chunk's payload
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="layer 2"):
        for _ in Store.open(str(out)).iter_layer(2):
            pass
    r = CliRunner().invoke(app, ["verify", str(out), "--no-progress"])
    assert r.exit_code == 1 and any(l.startswith("DAMAGED") and "layer 2," in l for l in r.stdout.splitlines())


def test_unknown_codec_is_one_line_naming_the_choices(llama, prompts_file, tmp_path):
    r = CliRunner().invoke(app, ["capture", str(llama), "-p", str(prompts_file), "-o", str(tmp_path / "s.zarr"),
                                 "--codec", "gzip"])
    assert_refused(r, "codec='gzip'", "crc32c", "zstd-1")
    assert not (tmp_path / "s.zarr").exists()


def test_resume_keeps_the_store_s_own_codec_and_says_so(checkpoint, reference_stores, tmp_path, caplog):
    import logging

    prompts, refs = reference_stores
    out = _capture(checkpoint, prompts, tmp_path / "s.zarr", "float32", "crc32c")
    s = Store.open(str(out), mode="r+")
    s.group["units/done"][1] = 0  # unit 1 "never finished": resume rewrites it
    with caplog.at_level(logging.WARNING, logger="spinal.capture.session"):
        capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts), out=str(out), unit_tokens=16,
                              dtype="float32", resume=True))  # the default codec asked for
    assert any("created with codec crc32c" in r.getMessage() for r in caplog.records)
    assert Store.open(str(out)).meta["codec"] == "crc32c"
    assert [type(c).__name__ for c in zarr.open_array(str(out / "hidden"), mode="r").compressors] == ["Crc32cCodec"]
    assert np.array_equal(store_arrays(out)["hidden"], store_arrays(refs["float32"])["hidden"])
