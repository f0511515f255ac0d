"""A `spinal run` driver on a local Ray instance is SIGKILLed mid-capture; `--resume` finishes without redoing units.

Kept apart from test_ray.py so no other Ray cluster is alive while this one starts and dies.
"""

from __future__ import annotations

import os

import pytest

from conftest import write_jsonl
from spinal.store.contract import Store


@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_finished_units(checkpoint, tmp_path):
    """`spinal run` on a local Ray instance, SIGKILLed mid-capture, then `--resume` in a fresh driver."""
    import json
    import signal
    import subprocess
    import sys
    import time

    # 48 units: after the kill, actors still running until Ray sees the driver gone have finished up to 9 more
    # units (CI, 2 cores), which with 12 units once left none for the resume to do
    rows = [{"id": f"q{i}", "prompt": f"Kindly describe topic {i} in two short sentences."} for i in range(96)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    (tmp_path / "run.toml").write_text(
        '[run]\nout = "out"\nprompts = "prompts.jsonl"\n'
        f'[[checkpoints]]\nlabel = "base"\npath = "{checkpoint("llama")}"\n'
        f'[[checkpoints]]\nlabel = "tuned"\npath = "{checkpoint("llama", seed=1)}"\n'
        "[capture]\nunit_tokens = 128\nbatch_size = 2\n[analyze]\nn_boot = 20\nnull_splits = 2\n"
        "[compare]\nn_boot = 50\n[cluster]\nreplicas = 2\n"
    )
    argv = [sys.executable, "-m", "spinal.cli.app", "run", str(tmp_path / "run.toml"), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    done_dir = tmp_path / "out" / "stores" / "base.zarr" / "units" / "done" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (done_dir.exists() and len(os.listdir(done_dir)) >= 3):
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert alive, f"the driver exited (rc {proc.returncode}) before it could be killed:\n" + \
        (tmp_path / "driver.log").read_text()[-3000:]
    assert done_dir.exists(), "no unit was captured within the deadline"
    # the actors share the driver's fate; a unit already being written may still finish (and is then done,
    # exactly once): count after they are gone
    time.sleep(5)
    store = tmp_path / "out" / "stores" / "base.zarr"
    done_at_kill = int(Store.open(str(store)).done().sum())
    n_units = Store.open(str(store)).meta["n_units"]
    assert 3 <= done_at_kill < n_units, f"the kill must land mid-capture: {done_at_kill} of {n_units} units were done"
    r = subprocess.run(argv + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    base = [s for s in summary["stages"] if s["stage"] == "capture" and s["label"] == "base"][0]
    left = n_units - done_at_kill
    assert f"{left} unit{'s' * (left != 1)} written, {done_at_kill} reused" in base["detail"]
    assert (tmp_path / "out" / "report" / "report.html").exists()


