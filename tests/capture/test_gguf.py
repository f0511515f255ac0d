"""GGUF inputs: a real pretrained model (SmolLM2-135M-Instruct, Q4_1) captured through the same self-checks, its
quantization and identity recorded; broken or foreign files refused in one line."""

from __future__ import annotations

from typer.testing import CliRunner

from conftest import assert_refused, real_model, write_jsonl
from spinal.checkpoint import fingerprint
from spinal.cli.app import app

runner = CliRunner()


def test_a_gguf_checkpoint_is_captured_dequantized_and_self_checked(tmp_path, monkeypatch):
    """Under its chat template (SmolLM2's adds a 20-token system prompt to every prompt) only the questions'
    own tokens are stored, and the self-checks hold on the real model. The file is parsed once (our check and
    transformers' config, tokenizer and weights reads share it: 67 s → 30 s for this capture here)."""
    import gguf as gguf_pkg

    from spinal.capture import gguf as ours

    parses = []
    real_reader = gguf_pkg.GGUFReader

    def counting(path, mode="r"):
        parses.append(str(path))
        return real_reader(path, mode)

    monkeypatch.setattr(gguf_pkg, "GGUFReader", counting)
    monkeypatch.setattr(ours, "_PARSED", {})
    gguf = real_model()
    questions = ["How do I bake bread at home?", "What is the capital of France?", "Why is the sky blue?",
                 "Give me three tips for better sleep."]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(questions)])
    out = tmp_path / "s.zarr"
    r = runner.invoke(app, ["capture", str(gguf), "-p", str(prompts), "-o", str(out), "--dtype", "float32",
                            "--chat-template", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert parses == [str(gguf)] and gguf_pkg.GGUFReader is counting  # one parse; the module restored
    from spinal.store.contract import Store

    s = Store.open(str(out))
    assert (s.layers, s.meta["dim"]) == (list(range(31)), 576)  # SmolLM2: embedding + 30 blocks, d = 576
    chk = s.meta["self_check"]  # hooks equal output_hidden_states; the stored lens equals the model's logits
    assert chk["hidden_max_abs_diff"] == 0.0 and chk["lens_top1_agreement"] == 1.0
    src = s.meta["source"]
    assert src["model"] == str(gguf) and src["weights_fingerprint"] == fingerprint(gguf)
    fmt = src["weights_format"]
    assert fmt["format"] == "gguf" and fmt["file"] == gguf.name
    assert fmt["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}  # as the file's tensor table says
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t = s.tokens()
    assert s.meta["positions"] == "text"
    assert [tok.decode(t["ids"][t["sequence"] == i]) for i in range(len(questions))] == questions


def test_the_planner_reads_a_gguf_config():
    from spinal.cluster.planner.presets import resolve_config

    name, source, cfg = resolve_config(str(real_model()))
    assert source.startswith("GGUF ") and cfg["model_type"] == "llama"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)


def test_a_file_that_is_not_gguf_and_a_torn_gguf_are_refused_in_one_line(tmp_path, prompts_file):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all")
    r = runner.invoke(app, ["capture", str(fake), "-p", str(prompts_file), "-o", str(tmp_path / "s.zarr")])
    assert_refused(r, "is a file but not a GGUF one")
    fake.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)  # the magic, then garbage
    r = runner.invoke(app, ["capture", str(fake), "-p", str(prompts_file), "-o", str(tmp_path / "s.zarr")])
    assert_refused(r, "is not a readable GGUF file", "re-download")
    assert not (tmp_path / "s.zarr").exists()
