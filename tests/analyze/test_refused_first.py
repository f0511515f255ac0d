"""Every refusal comes before any work: a second writer of the same output, an output that exists, a path of the
wrong kind (a pipe, a symlink loop, a store where an output folder goes), and duplicate layers, each refused in
one line by `spinal analyze`, `compare` and `report` before the analysis runs, with real processes where it
matters: the first writer is held inside its work until the test lets it go."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import assert_names_the_writer, assert_refused, kill_group, tree, wait_for, write_jsonl
from spinal.cli.app import app

runner = CliRunner()
FAST = ("--n-boot", "20", "--null-splits", "2", "--workers", "1", "--no-progress")

# Runs the `spinal` command line with one function (module:name) held at its entry: the process touches STARTED
# when its work begins, then waits for RELEASE to exist. A refused writer never touches STARTED.
HELD = textwrap.dedent("""
    import importlib, pathlib, sys, time
    target, started, release = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    module, name = target.split(":")
    m = importlib.import_module(module)
    real = getattr(m, name)
    def held(*a, **kw):
        started.touch()
        while not release.exists():
            time.sleep(0.02)
        return real(*a, **kw)
    setattr(m, name, held)
    from spinal.cli.app import app
    sys.argv = ["spinal"] + sys.argv[4:]
    app()
""")
WORK = {"analyze": "spinal.analyze.trace:analyze", "compare": "spinal.api:compare", "report": "spinal.api:report"}


def cli(*argv):
    return runner.invoke(app, [str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("refused")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(24)]
    p = write_jsonl(d / "p.jsonl", rows)
    for name, seed in (("a", 0), ("b", 1)):
        r = cli("capture", checkpoint("llama", seed=seed), "-p", p, "-o", d / f"{name}.zarr", "--unit-tokens", "64",
                "--no-progress")
        assert r.exit_code == 0, r.output
        r = cli("analyze", d / f"{name}.zarr", "-o", d / f"t{name}", "--label", name, *FAST)
        assert r.exit_code == 0, r.output
    return d


def _argv(verb: str, d: Path, out: Path) -> list[str]:
    return [str(a) for a in {"analyze": ("analyze", d / "a.zarr", "-o", out, *FAST),
                             "compare": ("compare", d / "ta", d / "tb", "-o", out, "--n-boot", "50"),
                             "report": ("report", d / "ta", d / "tb", "-o", out)}[verb]]


def _held(verb: str, argv: list[str], started: Path, release: Path) -> subprocess.Popen:
    """The verb in a process of its own, held at its work; its stderr goes to STARTED.stderr."""
    with open(f"{started}.stderr", "w") as log:
        return subprocess.Popen([sys.executable, "-c", HELD, WORK[verb], str(started), str(release), *argv],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)


@pytest.mark.parametrize("verb", ["analyze", "compare", "report"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_second_writer_of_one_output_is_refused_before_its_work(world, tmp_path, verb, overwrite):
    """The first writer is held inside its work; a second one into the same --out is refused, naming the first,
    without starting its own work (today it ran the whole analysis and refused only at the save)."""
    out = tmp_path / "out"
    flag = ["--overwrite"] if overwrite else []
    if overwrite:  # two --overwrite writers over a finished output: the old one stays whole while the first works
        assert cli(*_argv(verb, world, out)).exit_code == 0
        before = tree(out)
    release = tmp_path / "release"
    first = _held(verb, _argv(verb, world, out) + flag, tmp_path / "started1", release)
    try:
        assert wait_for(lambda: (tmp_path / "started1").exists() or first.poll() is not None)
        assert first.poll() is None, Path(f"{tmp_path / 'started1'}.stderr").read_text()
        second = _held(verb, _argv(verb, world, out) + flag, tmp_path / "started2", release)
        try:
            assert wait_for(lambda: second.poll() is not None or (tmp_path / "started2").exists())
            assert not (tmp_path / "started2").exists(), "the second writer started its work before it was refused"
        finally:
            kill_group(second)
        r = SimpleNamespace(returncode=second.returncode, stderr=Path(f"{tmp_path / 'started2'}.stderr").read_text())
        assert_names_the_writer(r, first.pid)
        assert r.stderr.startswith("error: ") and "being written by another SPINAL process" in r.stderr
        assert first.poll() is None  # refused while the first still held the output
        if overwrite:
            assert tree(out) == before
        else:
            assert not out.exists()
    finally:
        release.touch()
    try:
        assert first.wait(timeout=600) == 0, Path(f"{tmp_path / 'started1'}.stderr").read_text()
    finally:
        kill_group(first)
    assert (out / "spinal-output.json").is_file()
    assert not list(tmp_path.glob(".spinal-*")), "the hold left a hidden folder behind"


def test_killed_writer_hold_is_taken_over(world, tmp_path):
    """A writer SIGKILLed while it held the output leaves its hold; the next writer takes it over and finishes."""
    out = tmp_path / "out"
    first = _held("analyze", _argv("analyze", world, out), tmp_path / "started", tmp_path / "never")
    try:
        assert wait_for(lambda: (tmp_path / "started").exists() or first.poll() is not None)
    finally:
        kill_group(first)
    r = cli(*_argv("analyze", world, out))
    assert r.exit_code == 0, r.output
    assert (out / "spinal-output.json").is_file() and not list(tmp_path.glob(".spinal-*"))


@pytest.mark.parametrize("verb", ["analyze", "compare", "report"])
def test_existing_output_is_refused_before_the_work(world, tmp_path, verb):
    out = tmp_path / "out"
    assert cli(*_argv(verb, world, out)).exit_code == 0
    before = tree(out)
    p = subprocess.run([sys.executable, "-c", HELD, WORK[verb], str(tmp_path / "started"), str(tmp_path / "go"),
                        *_argv(verb, world, out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "--overwrite" in p.stderr, p.stderr
    assert not (tmp_path / "started").exists() and tree(out) == before


@pytest.mark.parametrize("verb", ["analyze", "compare", "report"])
def test_a_pipe_as_input_is_refused_by_kind(world, tmp_path, verb):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    argv = {"analyze": ("analyze", fifo, "-o", tmp_path / "t", *FAST),
            "compare": ("compare", world / "ta", fifo, "-o", tmp_path / "c"),
            "report": ("report", world / "ta", "-c", fifo, "-o", tmp_path / "r")}[verb]
    assert_refused(cli(*argv), str(fifo), "is a pipe (FIFO), not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_symlink_loop_is_called_a_loop(world, tmp_path, llama):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    prompts = world / "p.jsonl"
    for argv in (("analyze", loop, "-o", tmp_path / "t", *FAST),
                 ("compare", world / "ta", loop, "-o", tmp_path / "c"),
                 ("report", loop, "-o", tmp_path / "r"),
                 ("capture", llama, "-p", loop, "-o", tmp_path / "s.zarr", "--no-progress"),
                 ("capture", loop, "-p", prompts, "-o", tmp_path / "s.zarr", "--no-progress"),
                 ("run", loop)):
        r = cli(*argv)
        assert_refused(r, str(loop), "symlink loop")
        assert "does not exist" not in r.stderr


@pytest.mark.parametrize("verb", ["analyze", "compare", "report"])
def test_a_store_where_an_output_folder_goes_is_called_a_store(world, verb):
    store = world / "b.zarr"
    before = tree(store)
    argv = {"analyze": ("analyze", world / "a.zarr", "-o", store, *FAST),
            "compare": ("compare", world / "ta", world / "tb", "-o", store),
            "report": ("report", world / "ta", "-o", store)}[verb]
    r = cli(*argv, "--overwrite")
    assert_refused(r, str(store), "a SPINAL store", "nothing was touched")
    assert "not a SPINAL output folder" not in r.stderr
    assert tree(store) == before


def test_duplicate_layers_are_refused_in_one_line(world, tmp_path, llama):
    assert_refused(cli("analyze", world / "a.zarr", "-o", tmp_path / "t", "--layers", "0,2,2", *FAST),
                   "layers='0,2,2'", "layer(s) 2 more than once")
    assert_refused(cli("capture", llama, "-p", world / "p.jsonl", "-o", tmp_path / "s.zarr", "--layers", "0-3,2-4",
                       "--no-progress"), "layer(s) 2–3 more than once")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s.zarr").exists()
