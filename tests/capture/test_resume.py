"""Exactly-once resume: a capture killed with SIGKILL and resumed equals an uninterrupted run, array for array."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from conftest import store_arrays, write_jsonl
from spinal.errors import StoreError
from spinal.store.contract import Store


def _prompts(tmp_path, n=240):
    rows = [{"id": f"q{i}", "prompt": f"Question number {i}: what is {i} times {i % 7}? Think about it."}
            for i in range(n)]
    return write_jsonl(tmp_path / "many.jsonl", rows)


def _argv(ckpt, prompts, out, *extra):
    return [sys.executable, "-m", "spinal.cli.app", "capture", str(ckpt), "--prompts", str(prompts), "--out", str(out),
            "--unit-tokens", "64", "--batch-size", "2", "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(checkpoint, tmp_path):
    ckpt = checkpoint("llama")
    prompts = _prompts(tmp_path)
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    subprocess.run(_argv(ckpt, prompts, ref), check=True, capture_output=True)
    n_units = Store.open(str(ref)).meta["n_units"]
    assert n_units > 20

    proc = subprocess.Popen(_argv(ckpt, prompts, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = killed / "units" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill while units are being written
        if done_dir.exists() and len(os.listdir(done_dir)) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Store.open(str(killed))
    done_before = partial.done()
    # three marker files were seen; the last may be torn by the kill and then (rightly) reads as not done
    assert 2 <= done_before.sum() < n_units, "the kill must land mid-run"
    assert not partial.complete

    # a reader sees only done units and refuses the incomplete store by default
    with pytest.raises(StoreError, match=r"is incomplete: \d+ of \d+ units not captured"):
        next(partial.iter_layer(1))
    seen = sum(len(s) for _, s in partial.iter_layer(1, require_complete=False))
    owned = sum(int((partial.tokens()["sequence"][u.token_start:u.token_stop] >= 0).sum())
                for u in partial.units if done_before[u.index])
    assert seen == owned

    r = subprocess.run(_argv(ckpt, prompts, killed, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"({int(done_before.sum())} already done)" in r.stderr  # finished units were not redone
    a, b = store_arrays(ref), store_arrays(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert Store.open(str(killed)).complete
    meta_ref = zarr.open_group(str(ref)).attrs["spinal"]
    meta_res = zarr.open_group(str(killed)).attrs["spinal"]
    assert meta_ref["identity"] == meta_res["identity"]
    # resuming the finished store writes nothing, and says so without a rate
    r = subprocess.run(_argv(ckpt, prompts, killed, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"wrote 0 units ({n_units} already done)") and " 0 of " in line and "tok/s" not in line


def test_resume_of_complete_store_writes_nothing(checkpoint, prompts_file, tmp_path):
    from spinal.capture import capture
    from spinal.config import CaptureConfig

    out = str(tmp_path / "s.zarr")
    cfg = CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=out, unit_tokens=16)
    first = capture(cfg)
    again = capture(CaptureConfig(**{**cfg.__dict__, "resume": True}))
    assert again.units_written == 0 and again.units_skipped == first.units_written > 1


def test_resume_of_a_store_laid_out_differently_is_refused_and_keeps_it(checkpoint, prompts_file, tmp_path):
    """Units are written from the layout planned in memory: a store whose own layout differs (made by another
    SPINAL) must be refused, not filled at the planned offsets."""
    from spinal.capture import capture
    from spinal.config import CaptureConfig

    out = str(tmp_path / "s.zarr")
    cfg = CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=out, unit_tokens=16)
    capture(cfg)
    g = zarr.open_group(out, mode="r+")
    g["units/done"][1] = 0  # one unit left to finish
    offsets = g["sequences/offset"][:]
    g["sequences/offset"][1] = offsets[1] + 1  # as if another planner had packed the sequences
    before = store_arrays(out)
    with pytest.raises(StoreError, match=rf"lays out its tokens differently .*sequence 1 starts at token "
                                         rf"{offsets[1] + 1} in the store, {offsets[1]} in the plan"):
        capture(CaptureConfig(**{**cfg.__dict__, "resume": True}))
    after = store_arrays(out)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
