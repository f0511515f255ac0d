"""The README's command blocks run as written (placeholder paths replaced by tiny checkpoints), in a fresh folder.

Run here: the Python blocks (as scripts, so a missing ``__main__`` guard fails as it would for a user) and every
`spinal` line of the "Capture" and "Analyze, compare, report" blocks (through the CLI's entry point in this
process; `spinal --version` in a fresh one checks the installed script itself, tests/spinal). Not run here, each for its reason: the two
set-up commands (CI runs them: .ci/run), the demo and `spinal run` lines (the demo takes minutes; the run is
tested on a tiny config in tests/cluster), the cluster block (needs a Ray cluster; tests/cluster simulates
one) and the SmolLM2 block (tests/reference).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(section: str, lang: str) -> list[str]:
    """The fenced ``lang`` blocks under the README heading ``section`` (up to the next heading of its level)."""
    text = README.read_text()
    head = re.search(rf"^(#+) {re.escape(section)}\s*$", text, re.M)
    assert head, f"README has no section {section!r}"
    level = len(head.group(1))
    rest = text[head.end():]
    stop = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    body = rest[: stop.start()] if stop else rest
    return re.findall(rf"^```{lang}\n(.*?)^```", body, re.M | re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, checkpoint):
    """A user's folder: two checkpoints where the README says path/to/…, and a prompt file."""
    d = tmp_path_factory.mktemp("readme")
    for name, seed in (("checkpoint", 0), ("base", 0), ("dpo-checkpoint", 1), ("dpo", 1)):
        shutil.copytree(checkpoint("llama", seed=seed), d / "path" / "to" / name)
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: explain item {i * 7 % 13} kindly.", "response": f"Item {i}."}
            for i in range(16)]
    write_jsonl(d / "prompts.jsonl", rows)
    return d


def _sh(line: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """One `spinal` line, in this process (a fresh interpreter per line would spend most of this test on
    importing torch): the CLI's own entry point, arguments split as the shell splits them."""
    from typer.testing import CliRunner

    from spinal.cli.app import app

    args = shlex.split(line)
    assert args[0] == "spinal", line
    if args[1] in ("capture", "analyze"):
        args.append("--no-progress")
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(app, args[1:], catch_exceptions=False)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _lines(block: str) -> list[str]:
    """A block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", l).strip() for l in joined.splitlines() if l.strip() and not l.startswith("#")]


def test_capture_block_runs_as_written(workdir, monkeypatch):
    (block,) = blocks("Capture", "bash")
    lines = _lines(block)
    assert [l.split()[1] for l in lines] == ["capture", "capture", "capture", "inspect", "verify"]
    r = _sh(lines[0], workdir, monkeypatch)
    assert r.returncode == 0, r.stderr
    gpu = _sh(lines[1], workdir, monkeypatch)  # --device-map auto --max-memory for two GPUs: on a CPU-only machine, refused
    if gpu.returncode != 0:
        err = [l for l in gpu.stderr.splitlines() if l.strip()]
        assert gpu.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), gpu.stderr
        assert "Traceback" not in gpu.stderr
        r = _sh(lines[1].split(" --device-map")[0], workdir, monkeypatch)  # the same capture without the GPU map
        assert r.returncode == 0, r.stderr
    resume = lines[2].replace("…", f"path/to/checkpoint --prompts prompts.jsonl --out base.zarr")
    r = _sh(resume, workdir, monkeypatch)
    assert r.returncode == 0 and "already done" in r.stderr, r.stderr
    for line in lines[3:]:
        r = _sh(line, workdir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    assert "no damage" in r.stdout  # verify's verdict


def test_python_capture_block_runs_as_a_script(workdir):
    (block,) = blocks("Capture", "python")
    d = workdir / "py-capture"
    d.mkdir()
    shutil.copy(workdir / "prompts.jsonl", d)
    (d / "path").symlink_to(workdir / "path")
    script = d / "snippet.py"
    script.write_text(block + "\nprint('logp', tuple(logp.shape), float(logp.exp().sum(-1).mean()))\n")
    r = subprocess.run([sys.executable, str(script)], cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    shape, total = r.stdout.split("(")[1].split(")")
    assert float(total) == pytest.approx(1.0, abs=1e-5)  # rows of a softmax


def test_analyze_blocks_run_as_written(workdir, monkeypatch):
    bash, python = blocks("Analyze, compare, report", "bash"), blocks("Analyze, compare, report", "python")
    lines = [l for l in _lines(bash[0]) if not l.startswith("spinal run")]
    assert [l.split()[1] for l in lines] == ["analyze", "analyze", "compare"]
    assert (workdir / "base.zarr").exists() and (workdir / "dpo.zarr").exists(), "run the capture block first"
    for line in lines:
        r = _sh(line, workdir, monkeypatch)
        assert r.returncode == 0, (line, r.stderr)
    assert (workdir / "cmp" / "compare.json").exists()
    script = workdir / "snippet_analyze.py"
    script.write_text(python[0].replace('out="traces/', 'out="py-traces/'))
    r = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "d_a_lo" in r.stdout and "L_mean" in r.stdout


def test_store_format_block_runs_as_written(workdir):
    (block,) = blocks("The store format (for other tools)", "python")
    script = workdir / "snippet_store.py"
    script.write_text(block + "\nprint(h.dtype, h.shape)\n")
    r = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "float32"
