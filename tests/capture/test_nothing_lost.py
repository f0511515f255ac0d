"""Nothing lost at the store: --overwrite deletes only SPINAL's, a creation killed at any moment is finished by
--resume, one writer per store, every byte checked, no stray temporary files. Real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import (assert_names_the_writer, assert_refused, held_capture, kill_group, store_arrays, tree, wait_for,
                      write_jsonl)
from spinal.cli.app import app
from spinal.store.location import location_state
from spinal.store.lockfile import LOCK_NAME
from spinal.store.contract import Store

runner = CliRunner()


def cli(*argv):
    return runner.invoke(app, [str(a) for a in argv])


def capture_argv(ckpt, prompts, out, *extra):
    return [sys.executable, "-m", "spinal.cli.app", "capture", str(ckpt), "--prompts", str(prompts), "--out", str(out),
            "--unit-tokens", "16", "--no-progress", *extra]


@pytest.fixture()
def reference(llama, prompts_file, tmp_path):
    out = tmp_path / "reference.zarr"
    r = cli("capture", llama, "-p", prompts_file, "-o", out, "--unit-tokens", "16", "--no-progress")
    assert r.exit_code == 0, r.output
    return out


# -- 1. --overwrite deletes only what SPINAL made -------------------------------------------------

def test_overwrite_refuses_a_users_folder(llama, prompts_file, tmp_path):
    mine = tmp_path / "thesis"
    (mine / "chapter1").mkdir(parents=True)
    (mine / "notes.txt").write_text("three years of work")
    (mine / "chapter1" / "draft.tex").write_text("\\section{Intro}")
    before = tree(mine)
    assert_refused(cli("capture", llama, "-p", prompts_file, "-o", mine, "--overwrite"), "not a SPINAL store",
                    "nothing was touched")
    assert_refused(cli("capture", llama, "-p", prompts_file, "-o", mine, "--resume"), "not a SPINAL store")
    assert tree(mine) == before


def test_overwrite_refuses_another_tools_zarr_group(llama, prompts_file, tmp_path):
    other = tmp_path / "other.zarr"
    g = zarr.open_group(str(other), mode="w")
    g.create_array("x", shape=(4,), dtype="float32")[...] = np.arange(4)
    before = tree(other)
    assert_refused(cli("capture", llama, "-p", prompts_file, "-o", other, "--overwrite"), "not a SPINAL store")
    assert tree(other) == before


def test_overwrite_of_a_store_keeps_the_users_files_inside_it(llama, prompts_file, reference):
    (reference / "README-mine.txt").write_text("keep me")
    r = cli("capture", llama, "-p", prompts_file, "-o", reference, "--unit-tokens", "32", "--overwrite",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert (reference / "README-mine.txt").read_text() == "keep me"
    assert Store.open(str(reference)).meta["identity"]["unit_tokens"] == 32
    assert not (reference / LOCK_NAME).exists()


# -- 2. a creation cut short at any moment is finished by --resume --------------------------------

KILL_DURING_CREATION = textwrap.dedent("""
    import os, signal, sys
    import zarr.core.group as zg
    target = int(sys.argv[1])
    real = zg.Group.create_array
    n = {"i": 0}
    def create_array(self, *a, **kw):
        n["i"] += 1
        if n["i"] == target:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole process group, mid-creation
        return real(self, *a, **kw)
    zg.Group.create_array = create_array
    from spinal.cli.app import app
    sys.argv = ["spinal"] + sys.argv[2:]
    app()
""")


@pytest.mark.parametrize("at_array", [1, 6, 17])  # first array (hidden), the tables, the lens
def test_creation_killed_then_resume_or_rerun_finishes(llama, prompts_file, reference, tmp_path, at_array):
    out = tmp_path / "killed.zarr"
    argv = [sys.executable, "-c", KILL_DURING_CREATION, str(at_array), "capture", str(llama), "--prompts",
            str(prompts_file), "--out", str(out), "--unit-tokens", "16", "--no-progress"]
    p = subprocess.run(argv, start_new_session=True, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert location_state(str(out)) == "creating"
    r = cli("inspect", out)
    assert_refused(r, "creation never finished")
    # --resume means "finish or start"
    r = cli("capture", llama, "-p", prompts_file, "-o", out, "--unit-tokens", "16", "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    a, b = store_arrays(reference), store_arrays(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert Store.open(str(out)).complete


def test_plain_rerun_over_an_unfinished_creation_is_not_blocked(llama, prompts_file, tmp_path):
    out = tmp_path / "killed.zarr"
    argv = [sys.executable, "-c", KILL_DURING_CREATION, "3", "capture", str(llama), "--prompts",
            str(prompts_file), "--out", str(out), "--unit-tokens", "16", "--no-progress"]
    assert subprocess.run(argv, start_new_session=True, capture_output=True, timeout=300).returncode == -9
    r = cli("capture", llama, "-p", prompts_file, "-o", out, "--unit-tokens", "16", "--no-progress")
    assert r.exit_code == 0, r.output
    assert Store.open(str(out)).complete


def test_resume_with_no_store_starts_one(llama, prompts_file, tmp_path):
    r = cli("capture", llama, "-p", prompts_file, "-o", tmp_path / "new.zarr", "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    assert Store.open(str(tmp_path / "new.zarr")).complete


@pytest.fixture()
def small_fs(tmp_path):
    """A real, tiny file system (tmpfs), grown later with remount; root only."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_during_creation_is_one_line_and_resume_finishes(llama, prompts_file, reference, small_fs):
    out = small_fs / "s.zarr"
    r = subprocess.run(capture_argv(llama, prompts_file, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "disk full while creating" in lines[0], lines
    assert location_state(str(out)) in ("creating", "empty", "absent")
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)  # the user frees space
    r = subprocess.run(capture_argv(llama, prompts_file, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = store_arrays(reference), store_arrays(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- 3. one writer per store ------------------------------------------------------------------------

SLOW_DISK = held_capture("time.sleep(0.5)")  # a slow disk: each unit takes half a second to land


@pytest.mark.slow
def test_second_writer_is_refused_and_takes_over_after_the_first_dies(llama, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question number {i}: what is {i} times {i % 7}?"} for i in range(120)]
    prompts = write_jsonl(tmp_path / "many.jsonl", rows)
    out = tmp_path / "busy.zarr"
    argv = capture_argv(llama, prompts, out)
    first = subprocess.Popen([sys.executable, "-c", SLOW_DISK, *argv[3:]], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: location_state(str(out)) == "ready" and (out / "units/done/c").exists())
        for flag in ("--resume", "--overwrite"):
            r = subprocess.run([*argv, flag], capture_output=True, text=True, timeout=300)
            assert first.poll() is None, "the first writer must still be running: the test proves nothing otherwise"
            assert_names_the_writer(r, first.pid)
        kill_group(first)
    finally:
        kill_group(first)
    done_before = Store.open(str(out)).done().sum()
    assert 0 < done_before < Store.open(str(out)).meta["n_units"]
    r = subprocess.run([*argv, "--resume", "-v"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "took over the lock" in r.stderr and f"pid {first.pid}" in r.stderr
    assert f"({done_before} already done)" in r.stderr
    assert Store.open(str(out)).complete and not (out / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(llama, prompts_file, reference):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    (reference / LOCK_NAME).mkdir()
    rec = {"host": socket.gethostname(), "pid": dead.pid, "started": None, "since": time.time() - 3600,
           "heartbeat": time.time() - 3600, "token": "old"}
    (reference / LOCK_NAME / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spinal_lock": rec}}))
    r = cli("capture", llama, "-p", prompts_file, "-o", reference, "--unit-tokens", "16", "--resume",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert not (reference / LOCK_NAME).exists()


def test_live_lock_on_another_host_is_respected(llama, prompts_file, reference):
    (reference / LOCK_NAME).mkdir()
    rec = {"host": "gpu-node-7", "pid": 4242, "started": None, "since": time.time() - 30,
           "heartbeat": time.time(), "token": "theirs"}
    (reference / LOCK_NAME / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spinal_lock": rec}}))
    before = tree(reference)
    assert_refused(cli("capture", llama, "-p", prompts_file, "-o", reference, "--unit-tokens", "16",
                        "--overwrite"), "host gpu-node-7, pid 4242")
    assert tree(reference) == before


# -- 4. every byte of a store is checked --------------------------------------------------------------

def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_done_marker_is_named_by_verify_refused_by_analyze_and_redone_by_resume(
        llama, prompts_file, reference, tmp_path):
    _flip(reference / "units" / "done" / "c" / "2", at=0)
    r = cli("verify", reference, "--no-progress")
    assert r.exit_code == 1, r.output
    assert "DAMAGED units/done: unit(s) 2: " in r.stdout
    assert_refused(cli("analyze", reference, "-o", tmp_path / "t", "--no-progress"), "units/done",
                    "unit(s) 2", "--resume")
    r = cli("capture", llama, "-p", prompts_file, "-o", reference, "--unit-tokens", "16", "--resume",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "(3 already done)" in r.stderr or "already done" in r.stderr
    assert cli("verify", reference, "--no-progress").exit_code == 0


@pytest.mark.parametrize("array", ["sequences/prompt_id", "sequences/text_hash", "tokens/ids", "units/token_start",
                                   "lens/unembed"])
def test_flipped_byte_in_any_table_is_found(reference, tmp_path, array):
    chunk = next(p for p in (reference / array / "c").rglob("*") if p.is_file())
    _flip(chunk)
    r = cli("verify", reference, "--no-progress")
    assert r.exit_code == 1, r.output
    assert f"DAMAGED {array}: " in r.stdout
    assert "Traceback" not in r.output
    assert_refused(cli("analyze", reference, "-o", tmp_path / "t", "--no-progress"), "damaged")
    assert not (tmp_path / "t").exists()


def test_missing_root_metadata_is_named(reference):
    (reference / "zarr.json").unlink()
    assert_refused(cli("inspect", reference), "root zarr.json is missing", "--overwrite")
    assert_refused(cli("verify", reference), "root zarr.json is missing")


def test_corrupt_array_metadata_is_one_line(reference, tmp_path):
    (reference / "hidden" / "zarr.json").write_text("{ not json")
    assert_refused(cli("inspect", reference), "hidden", "verify")
    assert_refused(cli("analyze", reference, "-o", tmp_path / "t", "--no-progress"), "hidden")


# -- 5. no stray bytes ------------------------------------------------------------------------------------

def test_resume_removes_temporary_files_of_killed_writers(llama, prompts_file, reference):
    # what a writer killed between zarr's write and rename leaves: <key>.<uuid>.partial beside the key
    strays = [reference / "hidden" / "c" / "1" / "0" / "0.3f2a9c0d.partial", reference / "zarr.json.77.partial",
              reference / "units" / "done" / "c" / "1.9b1e.partial"]
    for p in strays:
        p.write_bytes(os.urandom(50_000))
    r = subprocess.run(capture_argv(llama, prompts_file, reference, "--resume", "-v"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in strays)
    assert "removed 3 temporary file(s)" in r.stderr


def test_fsspec_url_store_takes_and_releases_the_lock(llama, prompts_file, tmp_path):
    url = f"file://{tmp_path}/remote.zarr"
    argv = ("capture", llama, "-p", prompts_file, "-o", url, "--unit-tokens", "16", "--no-progress")
    assert cli(*argv).exit_code == 0
    assert_refused(cli(*argv), "already exists")
    (tmp_path / "remote.zarr" / LOCK_NAME).mkdir()
    rec = {"host": "gpu-node-7", "pid": 4242, "started": None, "since": time.time(), "heartbeat": time.time(),
           "token": "theirs"}
    (tmp_path / "remote.zarr" / LOCK_NAME / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spinal_lock": rec}}))
    assert_refused(cli(*argv, "--overwrite"), "gpu-node-7")
    (tmp_path / "remote.zarr" / LOCK_NAME / "zarr.json").unlink()
    assert cli(*argv, "--overwrite").exit_code == 0
    assert not (tmp_path / "remote.zarr" / LOCK_NAME).exists()
    assert cli("verify", url, "--no-progress").exit_code == 0
