"""Outputs appear whole or not at all, --overwrite replaces only SPINAL's own folders, and inputs that do not belong
together are refused: traces, comparisons and reports, through the CLI and with real killed processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import assert_refused, tree, write_jsonl
from spinal.cli.app import app

runner = CliRunner()


def cli(*argv):
    return runner.invoke(app, [str(a) for a in argv])


FAST = ("--n-boot", "20", "--null-splits", "2", "--workers", "1", "--no-progress")


@pytest.fixture(scope="module")
def world(tmp_path_factory, checkpoint):
    """Two checkpoints × one prompt set, and a third store on other prompts; their traces and a comparison."""
    d = tmp_path_factory.mktemp("outputs")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(24)]
    p = write_jsonl(d / "p.jsonl", rows)
    q = write_jsonl(d / "q.jsonl", rows[:12])
    a, b = checkpoint("llama"), checkpoint("llama", seed=1)
    w = {"a": a, "b": b, "dir": d}
    for name, ck, prompts in (("a", a, p), ("b", b, p), ("c", b, q)):
        r = cli("capture", ck, "-p", prompts, "-o", d / f"{name}.zarr", "--unit-tokens", "64", "--no-progress")
        assert r.exit_code == 0, r.output
        r = cli("analyze", d / f"{name}.zarr", "-o", d / f"t{name}", "--label", name, *FAST)
        assert r.exit_code == 0, r.output
    r = cli("compare", d / "ta", d / "tb", "-o", d / "cmp", "--n-boot", "50")
    assert r.exit_code == 0, r.output
    return w


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- --overwrite deletes only what SPINAL made ----------------------------------------------------------

@pytest.mark.parametrize("verb", ["analyze", "compare", "report"])
def test_overwrite_refuses_a_users_folder(world, tmp_path, verb):
    d = world["dir"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    argv = {"analyze": ("analyze", d / "a.zarr", "-o", mine, *FAST),
            "compare": ("compare", d / "ta", d / "tb", "-o", mine),
            "report": ("report", d / "ta", "-o", mine)}[verb]
    assert_refused(cli(*argv, "--overwrite"), "not a SPINAL output folder", "nothing was touched")
    assert tree(mine) == {"notes.txt": b"mine"}


def test_report_needs_overwrite_and_leaves_no_stale_plots(world, tmp_path):
    d = world["dir"]
    out = tmp_path / "rep"
    assert cli("report", d / "ta", d / "tb", "-c", d / "cmp", "-o", out).exit_code == 0
    assert (out / "plots" / "deltas.png").exists()
    assert_refused(cli("report", d / "ta", "-o", out), "exists", "--overwrite")
    r = cli("report", d / "ta", "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / "plots" / "deltas.png").exists()  # the comparison's plot does not survive
    (out / "extra.txt").write_text("mine")
    assert_refused(cli("report", d / "ta", "-o", out, "--overwrite"), "extra.txt")


def test_output_path_that_is_a_file_is_one_line(world, tmp_path):
    d = world["dir"]
    f = tmp_path / "a-file"
    f.write_text("x")
    assert_refused(cli("analyze", d / "a.zarr", "-o", f, *FAST), "is a file")
    assert_refused(cli("compare", d / "ta", d / "tb", "-o", f), "is a file")
    assert_refused(cli("report", d / "ta", "-o", f), "is a file")
    assert_refused(cli("capture", world["a"], "-p", d / "p.jsonl", "-o", f), "is a file")
    assert_refused(cli("analyze", d / "a.zarr", "-o", f / "sub", *FAST), "is a file")
    assert f.read_text() == "x"


@pytest.fixture()
def read_only_dir(tmp_path):
    """A real read-only file system (root ignores permission bits, not a read-only mount)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    yield ro
    subprocess.run(["umount", "-l", str(ro)])


def test_read_only_output_is_refused_before_any_work(world, read_only_dir):
    d = world["dir"]
    for argv in (("analyze", d / "a.zarr", "-o", read_only_dir / "t", *FAST),
                 ("compare", d / "ta", d / "tb", "-o", read_only_dir / "c"),
                 ("report", d / "ta", "-o", read_only_dir / "r"),
                 ("capture", world["a"], "-p", d / "p.jsonl", "-o", read_only_dir / "s.zarr")):
        assert_refused(cli(*argv), "not writable")


# -- outputs appear whole or not at all -----------------------------------------------------------------

KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import pandas as pd
    real = pd.DataFrame.to_parquet
    target = int(sys.argv[1])
    n = {"i": 0}
    def to_parquet(self, *a, **kw):
        n["i"] += 1
        if n["i"] == target:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # mid-save, the whole process group
        return real(self, *a, **kw)
    pd.DataFrame.to_parquet = to_parquet
    from spinal.cli.app import app
    sys.argv = ["spinal"] + sys.argv[2:]
    app()
""")


@pytest.mark.parametrize("at_write", [1, 2])
def test_analyze_overwrite_killed_mid_save_keeps_the_old_trace_whole(world, tmp_path, at_write):
    d = world["dir"]
    out = _copy(d / "ta", tmp_path / "t")
    before = tree(out)
    argv = [sys.executable, "-c", KILL_DURING_SAVE, str(at_write), "analyze", str(d / "a.zarr"), "-o", str(out),
            "--overwrite", "--seed", "7", *FAST]
    p = subprocess.run(argv, start_new_session=True, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert tree(out) == before  # the old trace, untouched
    assert cli("report", out, "-o", tmp_path / "r").exit_code == 0  # and it loads
    r = cli("analyze", d / "a.zarr", "-o", out, "--overwrite", "--seed", "7", *FAST)
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob(".spinal-*"))  # the killed writer's temporary folder is gone
    assert '"seed": 7' in (out / "trace.json").read_text()


def test_torn_or_mixed_trace_is_refused_by_name(world, tmp_path):
    d = world["dir"]
    torn = _copy(d / "ta", tmp_path / "torn")
    data = (torn / "trace.parquet").read_bytes()
    (torn / "trace.parquet").write_bytes(data[: len(data) // 2])
    assert_refused(cli("report", torn, "-o", tmp_path / "r1"), "trace.parquet", "digest")
    mixed = _copy(d / "ta", tmp_path / "mixed")
    shutil.copy(d / "tb" / "bootstrap.parquet", mixed / "bootstrap.parquet")
    assert_refused(cli("compare", mixed, d / "tb", "-o", tmp_path / "c1"), "bootstrap.parquet")
    gone = _copy(d / "ta", tmp_path / "gone")
    (gone / "sequences.parquet").unlink()
    assert_refused(cli("compare", gone, d / "tb", "-o", tmp_path / "c2"), "sequences.parquet", "missing")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "c1").exists()


def test_v01_trace_without_marker_with_garbage_parquet_is_one_line(world, tmp_path):
    d = world["dir"]
    old = _copy(d / "ta", tmp_path / "old")
    (old / "spinal-output.json").unlink()  # as SPINAL 0.1 wrote it
    assert cli("report", old, "-o", tmp_path / "ok").exit_code == 0
    (old / "trace.parquet").write_bytes(b"not a parquet file at all")
    assert_refused(cli("report", old, "-o", tmp_path / "r"), "trace.parquet", "cannot be read")


# -- inputs that do not belong together ---------------------------------------------------------------

def test_compare_refuses_weights_of_other_checkpoints(world, tmp_path):
    d = world["dir"]
    assert_refused(cli("compare", d / "ta", d / "tb", "-o", tmp_path / "c", "--weights", world["b"],
                        "--weights", world["a"]), "--weights", "not the checkpoint")
    r = cli("compare", d / "ta", d / "tb", "-o", tmp_path / "c", "--weights", world["a"], "--weights", world["b"],
            "--n-boot", "20")
    assert r.exit_code == 0, r.output


def test_compare_refuses_stores_of_other_traces(world, tmp_path):
    d = world["dir"]
    assert_refused(cli("compare", d / "ta", d / "tb", "-o", tmp_path / "c", "--stores", d / "a.zarr",
                        "--stores", d / "c.zarr"), "--stores", "not the store")
    assert_refused(cli("compare", d / "ta", d / "tb", "-o", tmp_path / "c", "--stores", d / "b.zarr",
                        "--stores", d / "a.zarr"), "not the store")


def test_report_refuses_a_comparison_of_other_traces(world, tmp_path):
    d = world["dir"]
    assert_refused(cli("report", d / "ta", d / "tc", "-c", d / "cmp", "-o", tmp_path / "r"), "'c'",
                    "not in the comparison")
    # the same label, remade: the comparison was computed from the earlier trace
    remade = tmp_path / "tb2"
    assert cli("analyze", d / "b.zarr", "-o", remade, "--label", "b", *FAST).exit_code == 0
    assert_refused(cli("report", d / "ta", remade, "-c", d / "cmp", "-o", tmp_path / "r"), "not the one")


def test_compare_n_boot_zero_is_one_line(world, tmp_path):
    d = world["dir"]
    assert_refused(cli("compare", d / "ta", d / "tb", "-o", tmp_path / "c", "--n-boot", "0"), "n_boot=0", "≥ 1 resample")
