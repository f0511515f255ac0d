"""`spinal run … 2> log`: where stderr is not a terminal, the run is followed in log lines, one per stage and
checkpoint with the elapsed time, written while it runs (a real process whose report stage is held back)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import kill_group, wait_for, write_jsonl

# The `spinal` command line with the report stage held: it touches STARTED on entering it, then waits for RELEASE.
HELD_REPORT = textwrap.dedent("""
    import pathlib, sys, time
    import spinal.analyze.report.html as html
    started, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    real = html.write_report
    def held(*a, **kw):
        started.touch()
        while not release.exists():
            time.sleep(0.02)
        return real(*a, **kw)
    html.write_report = held
    from spinal.cli.app import app
    sys.argv = ["spinal"] + sys.argv[3:]
    app()
""")
LINE = re.compile(r"^\[\d+:\d\d:\d\d\] (\S+) +(.+?): (.+)$")


def _config(tmp_path: Path, ckpts: dict[str, Path]) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"Please answer question {i} about topic {i % 5} politely."} for i in range(24)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    text = '[run]\nout = "out"\nprompts = "prompts.jsonl"\n'
    for label, path in ckpts.items():
        text += f'\n[[checkpoints]]\nlabel = "{label}"\npath = "{path}"\n'
    text += '\n[capture]\nunit_tokens = 256\n\n[analyze]\nn_boot = 30\nworkers = 1\nnull_splits = 4\n'
    text += '\n[compare]\nn_boot = 200\n'
    f = tmp_path / "run.toml"
    f.write_text(text)
    return f


def _events(log: Path) -> list[tuple[str, str, str]]:
    """(stage, label, what) of every progress line in the log."""
    return [m.groups() for line in log.read_text().splitlines() if (m := LINE.match(line))]


def test_run_to_a_log_file_writes_a_line_per_stage_while_it_runs(tmp_path, checkpoint):
    cfg = _config(tmp_path, {"a": checkpoint("llama"), "b": checkpoint("llama", seed=1)})
    log, started, release = tmp_path / "log", tmp_path / "started", tmp_path / "release"
    with log.open("w") as f:
        p = subprocess.Popen([sys.executable, "-c", HELD_REPORT, str(started), str(release), "run", str(cfg)],
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        assert wait_for(lambda: started.exists() or p.poll() is not None, timeout=600)
        assert p.poll() is None, log.read_text()
        # The run is in its report stage and has not finished: every stage before it is already in the log.
        assert not (tmp_path / "out" / "report").exists()
        seen = _events(log)
        for stage in ("capture", "analyze"):
            for label in ("a", "b"):
                assert (stage, label, "started") in seen, (stage, label, log.read_text())
                assert any(s == stage and lab == label and what.startswith("done (") for s, lab, what in seen)
        assert ("compare", "a,b", "started") in seen and ("report", "all", "started") in seen
        assert not any(s == "report" and what.startswith("done") for s, _, what in seen)
        assert any(s == "capture" and re.fullmatch(r"[\d,]+/[\d,]+ tok", what) for s, _, what in seen)
    finally:
        release.touch()
    try:
        assert p.wait(timeout=600) == 0, log.read_text()
    finally:
        kill_group(p)
    assert any(s == "report" and what.startswith("done (") for s, _, what in _events(log))
    assert "\x1b[" not in log.read_text()  # no terminal control codes in a log file

    # --resume of the finished run: each stage said to be reused, in the same log form.
    r = subprocess.run([sys.executable, "-m", "spinal.cli.app", "run", str(cfg), "--resume"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    reused = [m.groups() for line in r.stderr.splitlines() if (m := LINE.match(line))]
    assert ("capture", "a", "reused (store complete)") in reused and ("analyze", "b", "reused (trace exists)") in reused
