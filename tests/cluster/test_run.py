"""`spinal run CONFIG`: config validation by key, the whole batch job, and resume by stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from spinal.cli.app import app
from spinal.config import load_run_config
from spinal.errors import InputError

runner = CliRunner()


def _config(tmp_path: Path, ckpts: dict[str, Path], extra: str = "", **run) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"Please answer question {i} about topic {i % 5} politely."} for i in range(24)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    text = '[run]\nout = "out"\nprompts = "prompts.jsonl"\n'
    for label, path in ckpts.items():
        text += f'\n[[checkpoints]]\nlabel = "{label}"\npath = "{path}"\n'
    text += '\n[capture]\nunit_tokens = 256\n\n[analyze]\nn_boot = 30\nworkers = 1\nnull_splits = 4\n'
    text += '\n[compare]\nn_boot = 200\n' + extra
    f = tmp_path / "run.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("\n[capture2]\nx = 1\n", "unknown table(s) ['capture2']"),
        ("\n[analyse]\nn_boot = 3\n", "unknown table(s) ['analyse']"),
    ],
)
def test_unknown_tables_are_named(tmp_path, checkpoint, extra, needle):
    f = _config(tmp_path, {"a": checkpoint("llama")}, extra)
    with pytest.raises(InputError) as e:
        load_run_config(str(f))
    assert needle in str(e.value)


def test_unknown_and_mistyped_keys_are_named(tmp_path, checkpoint):
    f = _config(tmp_path, {"a": checkpoint("llama")})
    f.write_text(f.read_text().replace("unit_tokens = 256", "unit_tokens = 256\nbatchsize = 4"))
    with pytest.raises(InputError, match=r"unknown key\(s\) \['batchsize'\] in \[capture\]"):
        load_run_config(str(f))
    f.write_text(f.read_text().replace("batchsize = 4", 'batch_size = "four"'))
    with pytest.raises(InputError, match=r"\[capture\]: key 'batch_size' = 'four' has the wrong type; expected int"):
        load_run_config(str(f))  # typed once, at load: no stage starts on a config that cannot run


def test_out_and_set_override_the_file_and_are_checked_like_it(tmp_path, checkpoint, monkeypatch):
    f = _config(tmp_path, {"a": checkpoint("llama")})
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(str(f), out="elsewhere", sets=["analyze.n_boot=2000", "capture.dtype=bfloat16",
                                                         "compare.weights=false"])
    assert cfg.out == str(tmp_path / "elsewhere")  # relative to the working directory, like any CLI path
    assert (cfg.analyze.n_boot, cfg.capture.dtype, cfg.compare.weights) == (2000, "bfloat16", False)
    assert cfg.analyze.workers == 1 and cfg.record()["analyze"]["n_boot"] == 2000  # the rest of the file kept
    for item, needle in [("analyze.n_bot=3", "--set [analyze] n_bot: unknown key"),
                         ("analyze.n_boot=many", "n_boot"), ("n_boot=3", "expected TABLE.KEY=VALUE"),
                         ("analyze.store=x.zarr", "the run sets analyze.store itself")]:
        r = runner.invoke(app, ["run", str(f), "--set", item, "--no-progress"])
        assert r.exit_code == 2 and needle in r.stderr, (item, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_refused_before_any_work(tmp_path, checkpoint):
    f = _config(tmp_path, {"a": checkpoint("llama"), "b": tmp_path / "nowhere"})
    r = runner.invoke(app, ["run", str(f), "--no-progress"])
    assert r.exit_code == 2
    assert "nowhere" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "out" / "stores").exists()


@pytest.mark.slow
def test_run_end_to_end_then_resume_reuses_everything(tmp_path, checkpoint):
    f = _config(tmp_path, {"base": checkpoint("llama"), "tuned": checkpoint("llama", seed=1),
                           "tuned2": checkpoint("llama", seed=2)})
    f.write_text(f.read_text().replace("workers = 1\n", "workers = 1\nlens_tokens = 200\n"))  # a pilot that grows
    r = runner.invoke(app, ["run", str(f), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    metas = [json.loads((out / "traces" / k / "trace.json").read_text()) for k in ("base", "tuned", "tuned2")]
    assert metas[0]["lens_pilot"] == 200 and metas[0]["lens_floor"] == 0
    for m in metas[1:]:  # every checkpoint's L is read on at least the reference's tokens (nested in one order)
        assert m["lens_floor"] == metas[0]["lens_tokens"] <= m["lens_tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["capture", "analyze"] * 3 + ["compare", "report"]
    cmp = pd.read_csv(out / "compare" / "compare.csv")
    assert set(cmp["other"]) == {"tuned", "tuned2"} and set(cmp["ref"]) == {"base"}
    doc = json.loads((out / "compare" / "compare.json").read_text())
    assert doc["pairs"][0]["grad_concentration"] is not None  # weights were streamed from the checkpoints
    assert len(doc["series"]) == 3
    html = (out / "report" / "report.html").read_text()
    assert "tuned2" in html and "data:image/png;base64," in html
    assert {"fr_total", "fr_representation", "fr_readout"} <= set(cmp.columns)  # cross-readout lens
    assert "FR readout" in html
    pos = pd.read_csv(out / "compare" / "positions.csv")  # where in the reply the checkpoints differ
    assert set(pos["other"]) == {"tuned", "tuned2"} and 0 < doc["pairs"][0]["shifted_share"] <= 1
    assert "where in the reply" in html and "of reply positions" in html

    r = runner.invoke(app, ["run", str(f), "--no-progress"])
    assert r.exit_code == 2 and "--resume" in r.stderr
    r = runner.invoke(app, ["run", str(f), "--no-progress", "--resume"])
    assert r.exit_code == 0, r.output
    again = json.loads((out / "summary.json").read_text())
    assert all(s["skipped"] for s in again["stages"] if s["stage"] in ("capture", "analyze"))

    f.write_text(f.read_text().replace("n_boot = 30", "n_boot = 31"))
    r = runner.invoke(app, ["run", str(f), "--no-progress", "--resume"])
    assert r.exit_code == 2 and "changed since" in r.stderr and "n_boot" in r.stderr
    f.write_text(f.read_text().replace("n_boot = 31", "n_boot = 30"))

    # the same prompt file path with other content: refused at once, before any stage reruns
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts.read_text().replace("politely", "briefly"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    r = runner.invoke(app, ["run", str(f), "--no-progress", "--resume"])
    assert r.exit_code == 2 and "prompts_sha256" in r.stderr, r.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_run_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, checkpoint):
    f = _config(tmp_path, {"a": checkpoint("llama")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    r = runner.invoke(app, ["run", str(f), "--no-progress", "--overwrite"])
    assert r.exit_code == 2 and "not a SPINAL output folder" in r.stderr, r.output
    assert (tmp_path / "out" / "thesis.tex").read_text() == "mine"


def test_unreachable_ray_address_fails_fast_and_keeps_the_run_folder(tmp_path, checkpoint):
    import socket

    f = _config(tmp_path, {"a": checkpoint("llama"), "b": checkpoint("llama", seed=1)})
    keep = tmp_path / "out" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("earlier results")
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = runner.invoke(app, ["run", str(f), "--no-progress", "--overwrite", "--address", f"127.0.0.1:{port}"])
    assert r.exit_code == 2 and "cannot reach Ray" in r.stderr, r.output
    assert keep.read_text() == "earlier results"


@pytest.mark.parametrize("env, expect", [
    ({}, "this machine has no token"),
    ({"RAY_AUTH_TOKEN": "abc"}, "reject this machine's token (RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_MODE": "disabled"}, "start it with `ray start --head`"),
])
def test_a_cluster_that_refuses_the_driver_names_token_authentication(tmp_path, monkeypatch, env, expect):
    """Ray ≥ 2.59's `ray start` requires a token; a driver without the head's token is refused after ~20 s of
    'InvalidAuthToken' retries and a bare ConnectionError. The error names the cause and the fix."""
    import ray

    from spinal.cluster import ray_cluster
    from spinal.errors import InputError

    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token here

    def refused(**kw):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6391")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(InputError) as e:
        ray_cluster.connect("auto")
    msg = str(e.value)
    assert msg.startswith("cannot reach Ray at auto: Failed to connect to Ray cluster at 192.0.2.2:6391; ")
    assert expect in msg, msg
    if not env:
        assert f"{tmp_path}/.ray/auth_token is missing" in msg and "RAY_AUTH_MODE=disabled" in msg
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    if not env:
        with pytest.raises(InputError, match="copy the head node's ~/.ray/auth_token here"):
            ray_cluster.connect("auto")
