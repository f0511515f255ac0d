"""Bad input to the monitor is one line before training starts (never a crash at step 500), and `spinal watch`'s
is one line and exit 2, with nothing already stored touched."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import assert_refused, build_model, write_jsonl
from spinal.cli.app import app
from spinal.errors import SpinalError
from spinal.monitor import SpinalCallback
from trainers import probe, trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture()
def tiny(tmp_path):
    return trainer(tmp_path), probe(tmp_path / "probe.jsonl")


def refused(fn, *needles) -> str:
    with pytest.raises(SpinalError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_the_callback_refuses_bad_input_in_one_line_before_training(tiny, tmp_path):
    t, p = tiny
    audit = str(tmp_path / "audit")
    refused(lambda: SpinalCallback(t, prompts=str(tmp_path / "nope.jsonl"), out=audit), "nope.jsonl")
    (tmp_path / "file").write_text("x")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=str(tmp_path / "file")), "is a file")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=str(tmp_path / "theirs")), "not a SPINAL audit folder")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    refused(lambda: SpinalCallback(object(), prompts=str(p), out=audit), "expected a transformers Trainer")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=audit, every=-1), "every=-1")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=audit, capture={"reply": "both"}), "reply = 'both'")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=audit, capture={"out": "x"}), "sets them itself")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=audit, analyze={"n_boot": "many"}), "n_boot")
    refused(lambda: SpinalCallback(t, out=audit), "prompts=")
    refused(lambda: SpinalCallback(t, prompts=str(write_jsonl(tmp_path / "one.jsonl", [{"prompt": "hi"}])),
                                   out=audit), "at least 2")
    refused(lambda: SpinalCallback(t, prompts=str(p), out=audit, reference=str(tmp_path / "missing")), "missing")
    assert not (tmp_path / "audit").exists()  # nothing was created by a refusal
    assert len(t.callback_handler.callbacks) == len([c for c in t.callback_handler.callbacks
                                                     if not isinstance(c, SpinalCallback)])


def test_the_callback_refuses_a_trainer_that_never_saves_and_a_model_it_cannot_capture(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    p = probe(tmp_path / "probe.jsonl")
    never = trainer(tmp_path / "a", save_strategy="no")
    refused(lambda: SpinalCallback(never, prompts=str(p), out=str(tmp_path / "audit")), "never saves", "every=N")
    SpinalCallback(never, prompts=str(p), out=str(tmp_path / "audit"), every=2)  # every N steps needs no saves
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    classifier = trainer(tmp_path / "b", model=LlamaForSequenceClassification(cfg))
    refused(lambda: SpinalCallback(classifier, prompts=str(p), out=str(tmp_path / "audit2")),
            "get_output_embeddings")


@pytest.fixture()
def run_dir(tmp_path, checkpoint):
    """A training output folder: checkpoint-2 complete, checkpoint-4 still being written (no trainer_state.json)."""
    run = tmp_path / "run"
    for step, done in ((2, True), (4, False)):
        shutil.copytree(checkpoint("llama"), run / f"checkpoint-{step}")
        if done:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return run


def test_watch_refuses_bad_input_with_one_line_and_exit_2(tmp_path, run_dir, checkpoint, prompts_file):
    cli = CliRunner()
    base = ["--prompts", str(prompts_file), "--once", "--no-progress"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(cli.invoke(app, ["watch", str(empty), "--out", str(tmp_path / "a1"), *base]),
                   "no complete checkpoint-N folder")
    assert_refused(cli.invoke(app, ["watch", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a2"), *base]),
                   "is not a folder")
    assert_refused(cli.invoke(app, ["watch", str(run_dir), "--out", str(tmp_path / "a3"), "--prompts",
                                    str(tmp_path / "nope.jsonl"), "--once"]), "nope.jsonl")
    assert_refused(cli.invoke(app, ["watch", str(run_dir)]), "--out", "--prompts")
    assert_refused(cli.invoke(app, ["watch", str(run_dir), "--config", str(tmp_path / "none.toml")]), "none.toml")
    other = run_dir.parent / "other"
    shutil.copytree(checkpoint("gpt2"), other / "checkpoint-6")
    (other / "checkpoint-6" / "trainer_state.json").write_text("{}")
    assert_refused(cli.invoke(app, ["watch", str(other), "--out", str(tmp_path / "a4"), "--reference",
                                    str(checkpoint("llama")), *base]), "checkpoint-6", "another base")
    assert_refused(cli.invoke(app, ["watch", str(run_dir), "--out", str(tmp_path / "a5"), *base,
                                    "--set", "analyze.n_boot=-1"]), "n_boot")


def test_watch_reads_a_checkpoint_only_once_it_is_complete_and_keeps_its_options(tmp_path, run_dir,
                                                                                  prompts_file):
    """checkpoint-4 has no trainer_state.json (the Trainer writes it last): not read; once it is there, the next
    --once audits it. A second watch into the same folder with other options is refused, the audit untouched."""
    cli = CliRunner()
    out = tmp_path / "audit"
    args = ["watch", str(run_dir), "--out", str(out), "--prompts", str(prompts_file), "--reference",
            str(run_dir / "checkpoint-2"), "--once", "--no-progress", "--set", "analyze.n_boot=20",
            "--set", "analyze.calibration_sims=0", "--set", "compare.n_boot=20"]
    r = cli.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (out / "series.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2]
    assert not (out / "stores" / "step-000004.zarr").exists()
    (run_dir / "checkpoint-4" / "trainer_state.json").write_text("{}")
    before = (out / "series.jsonl").read_text()
    assert_refused(cli.invoke(app, args[:-6] + ["--set", "analyze.n_boot=30"]), "other options")
    assert (out / "series.jsonl").read_text() == before
    r = cli.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (out / "series.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [2, 4]
    assert (out / "series.jsonl").read_text().startswith(before)  # step 2's row as it was


def test_sharded_training_is_refused_with_the_way_that_works(tiny, monkeypatch):
    """FSDP and DeepSpeed ZeRO-3 leave no process with the whole model: refused in one line naming `spinal watch`
    (the trainers' own flags set as accelerate sets them; no GPUs here to shard over)."""
    t, p = tiny
    monkeypatch.setattr(t, "is_fsdp_enabled", True, raising=False)
    refused(lambda: SpinalCallback(t, prompts=str(p), out="audit"), "FSDP", "spinal watch")
    monkeypatch.setattr(t, "is_fsdp_enabled", False, raising=False)
    monkeypatch.setattr(t, "is_deepspeed_enabled", True, raising=False)
    monkeypatch.setattr(t.args, "hf_deepspeed_config", type("DS", (), {"is_zero3": lambda self: True})(),
                        raising=False)
    refused(lambda: SpinalCallback(t, prompts=str(p), out="audit"), "ZeRO-3", "spinal watch")
    monkeypatch.setattr(t.args, "hf_deepspeed_config", type("DS", (), {"is_zero3": lambda self: False})())
    SpinalCallback(t, prompts=str(p), out="audit")  # ZeRO-1/2: every process holds the whole model
