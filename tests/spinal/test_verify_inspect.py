"""`spinal verify` finds a flipped byte and names its layer and token range; `spinal inspect` reports the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spinal.capture import capture
from spinal.cli.app import app
from spinal.config import CaptureConfig
from spinal.errors import IntegrityError
from spinal.store.contract import Store

runner = CliRunner()


@pytest.fixture()
def store_path(checkpoint, prompts_file, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=str(out), unit_tokens=16))
    return out


def test_clean_store_verifies(store_path):
    r = runner.invoke(app, ["verify", str(store_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    s = Store.open(str(store_path))
    t_chunk = s.meta["t_chunk"]
    chunks = len(s.layers) * sum(-(-(u.token_stop - u.token_start) // t_chunk) for u in s.units)
    # the count a user compares with the progress bar's: activation chunks, separately from the small arrays
    assert f"OK: {chunks:,} activation chunks and " in r.stdout and "tables and markers read, no damage" in r.stdout


def test_flipped_byte_is_reported_with_layer_and_tokens(store_path):
    s = Store.open(str(store_path))
    # shard key c/<layer>/<token shard>/0: flip one byte in the middle of layer 2, second shard
    shard = store_path / "hidden" / "c" / "2" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["verify", str(store_path), "--no-progress"])
    assert r.exit_code == 1, r.output
    t_shard = s.meta["t_shard"]
    damaged = [l for l in r.stdout.splitlines() if l.startswith("DAMAGED")]
    assert damaged and all("layer 2," in l for l in damaged)
    lo = int(damaged[0].split("tokens ")[1].split("–")[0])
    assert t_shard <= lo < 2 * t_shard
    with pytest.raises(IntegrityError, match="layer 2"):
        for _ in s.iter_layer(2):
            pass
    # other layers are unharmed and still read
    assert sum(len(x) for x, _ in s.iter_layer(1)) == s.meta["n_tokens_valid"]
    # the same report for a script: --json, exit code as without
    r = runner.invoke(app, ["verify", str(store_path), "--json", "--no-progress"])
    assert r.exit_code == 1, r.output
    info = json.loads(r.stdout)
    assert info["ok"] is False and info["chunks_read"] > 0
    assert {d["layer"] for d in info["damage"] if d["where"] == "hidden"} == {2}
    assert all(t_shard <= d["token_start"] < 2 * t_shard for d in info["damage"] if d["where"] == "hidden")


def test_version_is_printed():
    import spinal

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"spinal {spinal.__version__}"
    # the installed console script itself, in a fresh process (the README's lines call it by name)
    import subprocess
    import sys

    script = Path(sys.executable).with_name("spinal")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"spinal {spinal.__version__}", done.stderr


def test_inspect_json(store_path):
    r = runner.invoke(app, ["inspect", str(store_path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    s = Store.open(str(store_path))
    assert info["units_done"] == f"{s.meta['n_units']}/{s.meta['n_units']}"
    assert info["complete"] is True
    assert info["tokens"] == int((s.tokens()["sequence"] >= 0).sum())
    assert info["layers"] == "0–3" and info["dim"] == 64
    assert 0 < info["hidden_bytes_stored"]


def test_inspect_missing_store_is_one_line(tmp_path):
    r = runner.invoke(app, ["inspect", str(tmp_path / "nothing.zarr")])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: no SPINAL store")
