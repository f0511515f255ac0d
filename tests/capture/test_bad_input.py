"""Bad input: one clear line on stderr, exit code 2, and nothing already stored is damaged."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import PROMPTS, assert_refused, save_checkpoint, write_jsonl
from spinal.cli.app import app
from spinal.store.contract import Store

runner = CliRunner()


def run(*argv):
    return runner.invoke(app, [str(a) for a in argv])


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def existing(llama, prompts_file, tmp_path):
    """A finished store whose bytes must survive every refused command."""
    out = tmp_path / "existing.zarr"
    r = run("capture", llama, "-p", prompts_file, "-o", out, "--no-progress", "--unit-tokens", "16")
    assert r.exit_code == 0, r.output
    return out, tree_digest(out)


def test_missing_prompt_file(llama, tmp_path):
    assert_refused(run("capture", llama, "-p", tmp_path / "nope.jsonl", "-o", tmp_path / "s"), "nope.jsonl",
                   "does not exist")


def test_empty_prompt_file(llama, tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert_refused(run("capture", llama, "-p", tmp_path / "e.jsonl", "-o", tmp_path / "s"), "no prompts")


def test_malformed_jsonl_names_the_line(llama, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": oops}\n')
    assert_refused(run("capture", llama, "-p", tmp_path / "bad.jsonl", "-o", tmp_path / "s"), "bad.jsonl:2",
                   "malformed JSON")


def test_prompt_that_tokenizes_to_nothing(checkpoint, tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "fine", "prompt": "hi"}, {"id": "void", "prompt": ""}])
    assert_refused(run("capture", checkpoint("gpt2"), "-p", p, "-o", tmp_path / "s"), "'void'", "tokenizes to nothing")


def test_missing_model_folder(prompts_file, tmp_path):
    assert_refused(run("capture", tmp_path / "no-model", "-p", prompts_file, "-o", tmp_path / "s"), "does not exist")


def test_model_folder_without_weights(llama, prompts_file, tmp_path):
    d = tmp_path / "empty-model"
    d.mkdir()
    shutil.copy(llama / "config.json", d / "config.json")
    assert_refused(run("capture", d, "-p", prompts_file, "-o", tmp_path / "s"), "no weights")


def test_pickle_weights_need_opt_in(prompts_file, tmp_path):
    d = save_checkpoint(tmp_path / "pkl", "llama")
    from safetensors.torch import load_file

    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")  # a pickle-only checkpoint
    (d / "model.safetensors").unlink()
    assert_refused(run("capture", d, "-p", prompts_file, "-o", tmp_path / "s"), "pickle", "--allow-pickle")
    assert not (tmp_path / "s").exists()
    ok = run("capture", d, "-p", prompts_file, "-o", tmp_path / "s", "--allow-pickle", "--no-progress")
    assert ok.exit_code == 0, ok.output


def test_remote_code_needs_opt_in(llama, prompts_file, tmp_path):
    d = tmp_path / "remote"
    shutil.copytree(llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    assert_refused(run("capture", d, "-p", prompts_file, "-o", tmp_path / "s"), "--trust-remote-code")


def test_unknown_layer_index(llama, prompts_file, tmp_path):
    assert_refused(run("capture", llama, "-p", prompts_file, "-o", tmp_path / "s", "--layers", "0,2,9"),
                   "[9]", "0–3")


def test_existing_store_needs_resume_or_overwrite(llama, prompts_file, existing):
    out, digest = existing
    assert_refused(run("capture", llama, "-p", prompts_file, "-o", out), "already exists", "--resume")
    assert tree_digest(out) == digest


def test_resume_with_another_model_is_refused(checkpoint, prompts_file, existing):
    out, digest = existing
    other = checkpoint("llama", seed=1)
    assert_refused(run("capture", other, "-p", prompts_file, "-o", out, "--resume"), "weights_fingerprint")
    assert tree_digest(out) == digest


def test_resume_with_another_prompt_set_is_refused(llama, tmp_path, existing):
    out, digest = existing
    p = write_jsonl(tmp_path / "other.jsonl", PROMPTS[:2])
    assert_refused(run("capture", llama, "-p", p, "-o", out, "--resume"), "prompts_sha256")
    assert tree_digest(out) == digest


def test_overwrite_refused_before_touching_store_on_bad_model(prompts_file, tmp_path, existing):
    out, digest = existing
    assert_refused(run("capture", tmp_path / "missing", "-p", prompts_file, "-o", out, "--overwrite"))
    assert tree_digest(out) == digest


def test_disk_full_keeps_finished_units_and_resumes(llama, prompts_file, tmp_path, monkeypatch):
    out = tmp_path / "full.zarr"
    real = Store.write_unit
    calls = {"n": 0}

    def failing(self, unit, block, *pool):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, unit, block, *pool)

    monkeypatch.setattr(Store, "write_unit", failing)
    r = run("capture", llama, "-p", prompts_file, "-o", out, "--unit-tokens", "16", "--no-progress")
    assert_refused(r, "disk full", "--resume")
    s = Store.open(str(out))
    assert s.done().sum() == 2 and not s.complete
    monkeypatch.setattr(Store, "write_unit", real)
    r = run("capture", llama, "-p", prompts_file, "-o", out, "--unit-tokens", "16", "--no-progress", "--resume")
    assert r.exit_code == 0, r.output
    assert Store.open(str(out)).complete


@pytest.mark.parametrize("self_check", [True, False])
def test_nan_activation_names_layer_and_token(prompts_file, tmp_path, self_check):
    d = tmp_path / "nan-model"
    save_checkpoint(d, "llama")
    from safetensors.torch import load_file, save_file

    f = d / "model.safetensors"
    w = load_file(f)
    w["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")  # block 2 output turns NaN
    save_file(w, f, metadata={"format": "pt"})
    argv = ["capture", d, "-p", prompts_file, "-o", tmp_path / "s", "--no-progress"]
    if not self_check:
        argv.append("--no-self-check")
    assert_refused(run(*argv), "non-finite", "layer 2")
    if not self_check:
        assert not Store.open(str(tmp_path / "s")).done().any()


def test_parquet_and_text_prompt_files(llama, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spinal.capture.inputs.prompts import load_prompts

    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["Hi there", "Bye now"], "response": [" ok", " fine"]}),
                   tmp_path / "p.parquet")
    (tmp_path / "p.txt").write_text("Hi there\n\nBye now\n")
    par, txt = load_prompts(str(tmp_path / "p.parquet")), load_prompts(str(tmp_path / "p.txt"))
    assert [(p.id, p.prompt, p.response) for p in par.prompts] == [("a", "Hi there", " ok"), ("b", "Bye now", " fine")]
    assert [p.prompt for p in txt.prompts] == ["Hi there", "Bye now"]
    r = run("capture", llama, "-p", tmp_path / "p.parquet", "-o", tmp_path / "s", "--positions", "response",
            "--no-progress")
    assert r.exit_code == 0, r.output
    pq.write_table(pa.table({"question": ["x"]}), tmp_path / "bad.parquet")  # no known layout: columns and flags named
    assert_refused(run("capture", llama, "-p", tmp_path / "bad.parquet", "-o", tmp_path / "t"), "no known layout",
                   "'question'", "--prompt-column")


def test_wrong_lens_is_refused_by_the_self_check(llama, prompts_file, tmp_path, monkeypatch):
    """If discovery described the readout wrongly, the logits check refuses the model instead of storing it."""
    import dataclasses

    import spinal.capture.session as session_mod
    from spinal.capture.discover import discover as real_discover

    def wrong(model):
        a = real_discover(model)
        return dataclasses.replace(a, spec=dataclasses.replace(a.spec, weight_offset=1.0))  # Gemma's 1 + w on Llama

    monkeypatch.setattr(session_mod, "discover", wrong)
    assert_refused(run("capture", llama, "-p", prompts_file, "-o", tmp_path / "s"), "LlamaForCausalLM",
                   "lens does not reproduce the model's logits")
    assert not (tmp_path / "s").exists()


def test_device_map_spilling_to_cpu_is_refused_without_opt_in():
    from spinal.capture.load import refuse_offload
    from spinal.errors import ModelError

    class Fake(torch.nn.Module):
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}

    with pytest.raises(ModelError, match="spills 2 module"):
        refuse_offload(Fake(), allow_offload=False)
    refuse_offload(Fake(), allow_offload=True)
    Fake.hf_device_map = {"": "cpu"}  # a CPU-only replica is not offload
    refuse_offload(Fake(), allow_offload=False)


# -- the class behind the fault campaign's tracebacks and silent nonsense: validated up front -----------

def test_binary_prompt_file_is_one_line(llama, tmp_path):
    for name in ("p.jsonl", "p.txt"):
        (tmp_path / name).write_bytes(bytes(range(256)) * 4)
        assert_refused(run("capture", llama, "-p", tmp_path / name, "-o", tmp_path / "s"), "not UTF-8")
    assert not (tmp_path / "s").exists()


def test_binary_run_config_is_one_line(tmp_path):
    (tmp_path / "run.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert_refused(run("run", tmp_path / "run.toml", "--no-progress"), "not a text file")


def test_corrupt_root_metadata_is_refused_everywhere(llama, prompts_file, existing, tmp_path):
    out, _ = existing
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')  # torn by hand, not by SPINAL
    before = tree_digest(out)
    assert_refused(run("inspect", out), "root zarr.json is unreadable")
    assert_refused(run("analyze", out, "-o", tmp_path / "t", "--no-progress"), "root zarr.json is unreadable")
    assert_refused(run("capture", llama, "-p", prompts_file, "-o", out, "--resume"), "damaged", "--overwrite")
    assert tree_digest(out) == before
    r = run("capture", llama, "-p", prompts_file, "-o", out, "--overwrite", "--unit-tokens", "16", "--no-progress")
    assert r.exit_code == 0, r.output


@pytest.fixture()
def one_prompt_store(llama, tmp_path):
    p = write_jsonl(tmp_path / "one.jsonl", PROMPTS[:1])
    out = tmp_path / "one.zarr"
    assert run("capture", llama, "-p", p, "-o", out, "--no-progress").exit_code == 0
    return out


def test_one_prompt_store_refuses_intervals_instead_of_nan(one_prompt_store, tmp_path):
    assert_refused(run("analyze", one_prompt_store, "-o", tmp_path / "t", "--blocks", "1", "--no-progress"),
                   "1 sequence(s)", "--n-boot 0")
    r = run("analyze", one_prompt_store, "-o", tmp_path / "t", "--blocks", "1", "--n-boot", "0", "--null-splits", "0",
            "--no-progress")
    assert r.exit_code == 0, r.output


def test_more_blocks_than_sequences_is_said_and_recorded_and_window_past_the_rank_refused(existing, tmp_path, caplog):
    out, _ = existing
    r = run("analyze", out, "-o", tmp_path / "b", "--blocks", "1000", "--n-boot", "10", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "--blocks 1000 is more than the 5 sequences" in caplog.text
    assert json.loads((tmp_path / "b" / "trace.json").read_text())["blocks_used"] == 5
    assert_refused(run("analyze", out, "-o", tmp_path / "t", "--blocks", "4", "--window", "5:5000",
                       "--no-progress"), "--window 5:5000", "rank")
    assert not (tmp_path / "t").exists()


def test_max_length_beyond_the_context_is_refused(llama, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"id": "essay", "prompt": "word " * 80}])  # 400 characters
    assert_refused(run("capture", llama, "-p", long, "-o", tmp_path / "s", "--max-length", "1000"),
                   "'essay'", "context of 256", "--max-length ≤ 256")
    r = run("capture", llama, "-p", long, "-o", tmp_path / "s", "--max-length", "256", "--no-progress")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("damaged", ["config.json", "model.safetensors"])
def test_damaged_checkpoint_file_is_named(llama, prompts_file, tmp_path, damaged):
    d = tmp_path / "ckpt"
    shutil.copytree(llama, d)
    (d / damaged).write_bytes(b"{ this is not what it claims to be")
    assert_refused(run("capture", d, "-p", prompts_file, "-o", tmp_path / "s"), damaged)
    assert not (tmp_path / "s").exists()


def test_one_prompt_store_with_default_blocks_is_one_line(one_prompt_store, tmp_path):
    assert_refused(run("analyze", one_prompt_store, "-o", tmp_path / "t", "--no-progress"), "1 sequence(s)")


def test_run_resume_and_overwrite_together_is_refused(tmp_path):
    assert_refused(run("run", tmp_path / "any.toml", "--resume", "--overwrite"), "contradict")


@pytest.mark.parametrize("argv, needle", [
    (["inspect", "x", "--frobnicate"], "No such option: --frobnicate"),
    (["capture", "m", "-p", "x", "--batch-size", "abc"], "'--batch-size'"),
    (["capture", "m", "-p", "x"], "Missing option '--out'"),
])
def test_usage_errors_are_one_line_from_the_console_entry(argv, needle):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "spinal.cli.app", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
