"""The analysis pool leaves no worker behind: not on Ctrl-C, not when its parent is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import os, signal, sys, time
from spinal.analyze.pool import run_tasks

# Ctrl-C as in a terminal: a shell starts background jobs with SIGINT ignored, and Python then never raises
# KeyboardInterrupt (CI may run this suite as such a job)
signal.signal(signal.SIGINT, signal.default_int_handler)

def started(i):
    open(os.path.join(sys.argv[1], f"{os.getpid()}.pid"), "w").close()
    time.sleep(600)

if __name__ == "__main__":
    run_tasks([(started, {"i": i}) for i in range(4)], 2)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))  # a zombie is gone


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "pool_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:  # both workers are in a task
        time.sleep(0.1)
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    return proc, pids


def _gone(pids: list[int], wait_s: float = 60) -> bool:
    deadline = time.time() + wait_s
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_worker_outlives_an_interrupted_or_killed_analysis(tmp_path, sig):
    proc, pids = _start(tmp_path)
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)  # Ctrl-C: the tasks (10 min each) are not waited for
        assert _gone(pids), [p for p in pids if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    if sig == signal.SIGINT:
        assert b"KeyboardInterrupt" in stderr
