"""`spinal watch` SIGKILLed at every stage of its work (reference capture, a step's capture, its analysis, the
series update) and started again ends with the same series as an uninterrupted watch: no save lost, none audited
twice, every store whole. A second watch of the same audit folder is refused while the first runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import kill_group, wait_for
from spinal.cli.app import app
from trainers import probe

pytestmark = pytest.mark.slow
OPTIONS = ["--set", "analyze.n_boot=20", "--set", "analyze.calibration_sims=0", "--set", "analyze.lens_tokens=0",
           "--set", "compare.n_boot=20", "--set", "compare.cross_readout_tokens=128",
           "--set", "compare.position_tokens=128"]


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_watch_killed_at_every_stage_resumes_to_the_uninterrupted_series(tmp_path, checkpoint):
    run = tmp_path / "run"
    for i, step in enumerate((2, 4, 6), 1):  # three saves of a "run": different weights each
        shutil.copytree(checkpoint("llama", seed=i), run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    p = probe(tmp_path / "probe.jsonl")

    def args(out):
        return ["watch", str(run), "--out", str(out), "--prompts", str(p), "--reference", str(checkpoint("llama")),
                "--once", "--no-progress", *OPTIONS]

    r = CliRunner().invoke(app, args(tmp_path / "whole"))
    assert r.exit_code == 0, r.output
    whole = lines(tmp_path / "whole" / "series.jsonl")
    assert [json.loads(l)["step"] for l in whole] == [2, 4, 6]

    out = tmp_path / "killed"
    moments = {  # each kill lands while the watch is inside one stage of its work
        "capturing the reference": lambda: (out / "stores" / "reference.zarr").exists(),
        "capturing step 2": lambda: (out / "stores" / "step-000002.zarr").exists(),
        "analyzing step 4": lambda: (out / "traces" / "step-000002" / "trace.json").exists()
                                    and (out / "stores" / "step-000004.zarr").exists(),
        "after step 4's row": lambda: len(lines(out / "series.jsonl")) >= 2,
    }
    landed = []
    for name, moment in moments.items():
        proc = subprocess.Popen([sys.executable, "-m", "spinal.cli", *args(out)], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = wait_for(lambda: moment() or proc.poll() is not None, timeout=300, step=0.01)
        if reached and proc.poll() is None:
            landed.append(name)
            if name == "capturing step 2":  # a second watch of the folder meanwhile: refused, naming the first
                second = subprocess.run([sys.executable, "-m", "spinal.cli", *args(out)], capture_output=True,
                                        text=True, timeout=120)
                assert second.returncode == 2 and f"pid {proc.pid}" in second.stderr, second.stderr
        kill_group(proc)
    assert len(landed) >= 3, landed  # most kills land mid-work (a fast stage may finish first on a quiet machine)
    r = CliRunner().invoke(app, args(out))
    assert r.exit_code == 0, r.output
    assert lines(out / "series.jsonl") == whole
    for step in ("reference", "step-000002", "step-000004", "step-000006"):
        v = CliRunner().invoke(app, ["verify", str(out / "stores" / f"{step}.zarr")])
        assert v.exit_code == 0, v.output
