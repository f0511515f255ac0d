"""Stores in a bucket and over HTTP: capture, kill and resume, the one-writer lock, verify and analysis through s3fs
against a local S3 server (moto's, on 127.0.0.1, started by conftest's ``s3_server``); read-only analysis of a store
served by a local ``http.server``; every refusal (no credentials, no bucket, no s3fs, writing to HTTP) one line."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import (Bucket, assert_names_the_writer, assert_refused, held_capture, kill_group, store_arrays,
                      wait_for, write_jsonl)
from spinal.cli.app import app
from spinal.store.contract import Store
from spinal.store.location import location_state
from spinal.store.lockfile import LOCK_NAME

runner = CliRunner()
FAST = ("--n-boot", "20", "--null-splits", "2", "--workers", "1", "--no-progress")
ROWS = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(12)]


def cli(*argv):
    return runner.invoke(app, [str(a) for a in argv])


def capture_args(ckpt, prompts, out, *extra):
    return ("capture", ckpt, "-p", prompts, "-o", out, "--unit-tokens", "16", "--no-progress", *extra)


def same_store(a: Path, b: Path) -> None:
    """Every array (tables, lens, activations, the manifest units/done) equal value for value."""
    x, y = store_arrays(a), store_arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        assert np.array_equal(x[k], y[k]), k


@pytest.fixture(scope="module")
def world(tmp_path_factory, checkpoint, s3_server):
    """One local store, the same capture in the bucket, and the local store's trace."""
    d = tmp_path_factory.mktemp("bucket")
    ck, prompts = checkpoint("llama"), write_jsonl(d / "p.jsonl", ROWS)
    b = Bucket(*s3_server, "world")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in b.env.items():
            mp.setenv(k, v)
        for out in (d / "local.zarr", b.url("s.zarr")):
            r = cli(*capture_args(ck, prompts, out))
            assert r.exit_code == 0, r.output
    r = cli("analyze", d / "local.zarr", "-o", d / "t-local", "--label", "local", *FAST)
    assert r.exit_code == 0, r.output
    return {"dir": d, "ckpt": ck, "prompts": prompts, "url": b.url("s.zarr"), "bucket": b}


def trace_table(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "trace.parquet")


# -- capture into a bucket -------------------------------------------------------------------------------------

def test_capture_in_a_bucket_holds_what_a_local_capture_holds(world, bucket, tmp_path):
    objects = bucket.objects(world["url"])
    assert "zarr.json" in objects and "units/done/c/0" in objects
    assert not any(k.startswith(LOCK_NAME) for k in objects), "the lock is released"
    assert not any(k.endswith((".partial", ".tmp")) for k in objects)
    same_store(world["dir"] / "local.zarr", world["bucket"].download(world["url"], tmp_path / "copy.zarr"))
    r = cli("inspect", world["url"], "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["complete"] is True and s["units_done"] == "12/12" and s["writer"] is None
    r = cli("verify", world["url"], "--no-progress")
    assert r.exit_code == 0 and r.stdout.startswith("OK: "), r.output
    assert_refused(cli(*capture_args(world["ckpt"], world["prompts"], world["url"])), "already exists", "--resume")


# a stalled link: units from the third on never land (until the writer is killed)
SLOW_WRITES = held_capture("while unit.index >= 2:\n    time.sleep(0.05)")


@pytest.mark.slow
def test_killed_capture_in_a_bucket_is_held_by_one_writer_and_resumes_to_an_identical_store(world, bucket, tmp_path):
    url = bucket.url("killed.zarr")
    argv = [sys.executable, "-m", "spinal.cli.app", *map(str, capture_args(world["ckpt"], world["prompts"], url))]
    first = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *argv[3:]], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: bucket.exists(f"{url}/units/done/c/1"))  # units 0 and 1 landed; 2 never will
        # one writer: a second capture is refused in one line naming the first, while it holds the store
        r = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first writer must still be running: the test proves nothing otherwise"
        assert_names_the_writer(r, first.pid)
        kill_group(first)
    finally:
        kill_group(first)
    objects = bucket.objects(url)
    assert f"{LOCK_NAME}/zarr.json" in objects, "a killed writer leaves its lock"
    done = Store.open(url).done()
    assert done.sum() == 2 < done.size, "killed mid-capture, after its first two units"
    r = subprocess.run([*argv, "--resume", "-v"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "took over the lock" in r.stderr and f"pid {first.pid}" in r.stderr
    assert f"({int(done.sum())} already done)" in r.stderr
    objects = bucket.objects(url)
    assert not any(k.startswith(LOCK_NAME) for k in objects)
    same_store(world["dir"] / "local.zarr", bucket.download(url, tmp_path / "resumed.zarr"))
    ours, theirs = Store.open(url).meta, Store.open(str(world["dir"] / "local.zarr")).meta
    assert ours["complete"] and ours["identity"] == theirs["identity"] and ours["n_units"] == theirs["n_units"]


def _lock_record(host: str, pid: int, heartbeat: float) -> bytes:
    rec = {"host": host, "pid": pid, "started": None, "since": heartbeat - 30, "heartbeat": heartbeat,
           "token": "theirs"}
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spinal_lock": rec}}).encode()


def test_live_lock_of_another_host_in_a_bucket_is_respected_and_a_dead_one_taken_over(world, bucket, caplog):
    url = bucket.url("held.zarr")
    bucket.put(f"{url}/{LOCK_NAME}/zarr.json", _lock_record("gpu-node-7", 4242, time.time()))
    before = bucket.objects(url)
    assert_refused(cli(*capture_args(world["ckpt"], world["prompts"], url)), "host gpu-node-7, pid 4242")
    assert bucket.objects(url) == before
    assert_refused(cli("inspect", url), "no SPINAL store")  # only the lock there
    bucket.put(f"{url}/{LOCK_NAME}/zarr.json", _lock_record("gpu-node-7", 4242, time.time() - 3600))
    r = cli(*capture_args(world["ckpt"], world["prompts"], url))
    assert r.exit_code == 0, r.output
    assert "took over the lock" in caplog.text and "host gpu-node-7, pid 4242" in caplog.text
    assert Store.open(url).complete
    assert not any(k.startswith(LOCK_NAME) for k in bucket.objects(url))


def test_an_object_store_that_ignores_exclusive_create_is_refused_before_anything_is_written(world, bucket,
                                                                                            monkeypatch):
    import s3fs.core

    real = s3fs.core.S3File.commit

    def unconditional(self):  # a service that ignores If-None-Match: every "exclusive" create succeeds
        self.mode = self.mode.replace("x", "w")
        return real(self)

    monkeypatch.setattr(s3fs.core.S3File, "commit", unconditional)
    url = bucket.url("no-lock.zarr")
    assert_refused(cli(*capture_args(world["ckpt"], world["prompts"], url)), "ignores If-None-Match",
                   "one writer", "nothing was written")
    assert bucket.objects(url) == {}


# -- damage and analysis from the bucket ---------------------------------------------------------------------

def test_verify_names_a_flipped_byte_in_a_chunk_object_and_analyze_refuses(world, bucket, tmp_path):
    url = bucket.url("flipped.zarr")
    for rel, data in world["bucket"].objects(world["url"]).items():  # a copy of the world's store
        bucket.put(f"{url}/{rel}", data)
    shard = f"{url}/hidden/c/1/0/0"  # layer index 1, the first shard of tokens
    data = bytearray(bucket.get(shard))
    data[0] ^= 0x01  # inside the shard's first chunk
    bucket.put(shard, bytes(data))
    layer = Store.open(url).layers[1]
    r = cli("verify", url, "--no-progress")
    assert r.exit_code == 1, r.output
    damaged = [l for l in r.stdout.splitlines() if l.startswith("DAMAGED")]
    assert len(damaged) == 1 and damaged[0].startswith(f"DAMAGED hidden: layer {layer}, tokens 0–"), damaged
    assert "Traceback" not in r.output
    assert_refused(cli("analyze", url, "-o", tmp_path / "t", *FAST), f"layer {layer}", "spinal verify")
    assert not (tmp_path / "t").exists()


def test_analysis_from_the_bucket_equals_the_local_stores_and_compare_reads_stores_there(world, bucket, tmp_path):
    r = cli("analyze", world["url"], "-o", tmp_path / "t-bucket", "--label", "bucket", *FAST)
    assert r.exit_code == 0, r.output
    ours, theirs = trace_table(tmp_path / "t-bucket"), trace_table(world["dir"] / "t-local")
    num = [c for c in theirs.columns if pd.api.types.is_numeric_dtype(theirs[c])]
    assert len(num) > 5 and ours[num].equals(theirs[num]), "bit-identical numbers from the bucket"
    r = cli("compare", world["dir"] / "t-local", tmp_path / "t-bucket", "-o", tmp_path / "cmp", "--n-boot", "20",
            "--null-splits", "2", "--cross-tokens", "64", "--position-tokens", "64",
            "--stores", world["dir"] / "local.zarr", "--stores", world["url"])
    assert r.exit_code == 0, r.output
    cmp = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert len(cmp) and (tmp_path / "cmp" / "positions.csv").exists()


# -- refusals: one line, exit 2, nothing touched ----------------------------------------------------------------

def test_missing_credentials_is_one_line_and_touches_nothing(world, bucket, tmp_path):
    (tmp_path / "credentials").write_text("")
    (tmp_path / "config").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_EC2_METADATA_DISABLED="true",  # never ask 169.254.169.254
               AWS_ENDPOINT_URL=bucket.env["AWS_ENDPOINT_URL"])
    before = world["bucket"].objects(world["url"])
    for argv in (capture_args(world["ckpt"], world["prompts"], world["url"], "--overwrite"),
                 ("analyze", world["url"], "-o", tmp_path / "t", *FAST)):  # a fresh process: no cached client
        r = subprocess.run([sys.executable, "-m", "spinal.cli.app", *map(str, argv)], env=env, capture_output=True,
                           text=True, timeout=120)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        for needle in ("error: ", world["url"], "no credentials for the bucket", "AWS_ACCESS_KEY_ID",
                       "nothing was touched"):
            assert needle in lines[0], (needle, lines[0])
    assert world["bucket"].objects(world["url"]) == before and not (tmp_path / "t").exists()


def test_missing_bucket_is_refused_and_never_created(world, bucket):
    assert_refused(cli(*capture_args(world["ckpt"], world["prompts"], "s3://no-such-bucket/s.zarr")),
                   "'no-such-bucket' does not exist", "create it first")
    names = [b["Name"] for b in bucket.client.list_buckets()["Buckets"]]
    assert "no-such-bucket" not in names
    assert_refused(cli("inspect", "s3://no-such-bucket/s.zarr"), "nothing is there")


HIDE_S3FS = "import sys; sys.modules['s3fs'] = None; from spinal.cli.app import main; sys.argv[0] = 'spinal'; main()"


def test_without_s3fs_a_bucket_is_one_line_naming_the_package(world, bucket, tmp_path):
    for argv in (capture_args(world["ckpt"], world["prompts"], bucket.url("x.zarr")), ("inspect", world["url"])):
        r = subprocess.run([sys.executable, "-c", HIDE_S3FS, *map(str, argv)], capture_output=True, text=True,
                           timeout=120)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "pip install s3fs" in lines[0] and "spinal[s3]" in lines[0], lines
    assert bucket.objects(bucket.url("x.zarr")) == {}


# -- a store served over HTTP: read-only -------------------------------------------------------------------------

@pytest.fixture()
def served(world):
    """The world's local folder served by http.server on 127.0.0.1 (a free port)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=world["dir"]))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_a_store_served_over_http_is_inspected_verified_and_analyzed(world, served, tmp_path):
    url = f"{served}/local.zarr"
    assert location_state(url) == "ready"
    r = cli("inspect", url, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["complete"] is True
    r = cli("verify", url, "--no-progress")
    assert r.exit_code == 0 and r.stdout.startswith("OK: "), r.output
    r = cli("analyze", url, "-o", tmp_path / "t-http", "--label", "local", *FAST)
    assert r.exit_code == 0, r.output
    assert trace_table(tmp_path / "t-http").equals(trace_table(world["dir"] / "t-local"))
    assert_refused(cli("inspect", f"{served}/nothing.zarr"), "nothing is there")
    assert_refused(cli("inspect", f"{served}/p.jsonl"), "nothing is there")


def test_writing_to_http_is_refused_in_one_line(world, served):
    before = sorted(p.name for p in world["dir"].iterdir())
    for out in (f"{served}/new.zarr", f"{served}/local.zarr"):
        for extra in ((), ("--resume",), ("--overwrite",)):
            assert_refused(cli(*capture_args(world["ckpt"], world["prompts"], out, *extra)), "read-only")
    assert sorted(p.name for p in world["dir"].iterdir()) == before
