"""A PEFT/LoRA adapter captured on top of its base: merged in memory, self-checked, both identities recorded."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import assert_refused, build_model
from spinal.checkpoint import fingerprint
from spinal.cli.app import app
from spinal.store.contract import Store

runner = CliRunner()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A rank-4 LoRA on q/v of the tiny Llama, with non-zero B (so it changes the model)."""
    from peft import LoraConfig, get_peft_model

    path = tmp_path_factory.mktemp("lora") / "adapter"
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(build_model("llama"), cfg).save_pretrained(path)
    return path


def _capture(ckpt, prompts, out, *extra):
    return runner.invoke(app, ["capture", str(ckpt), "-p", str(prompts), "-o", str(out), "--unit-tokens", "64",
                               "--no-progress", *extra])


def test_an_adapter_is_merged_self_checked_and_recorded(llama, adapter, prompts_file, tmp_path):
    r = _capture(llama, prompts_file, tmp_path / "merged.zarr", "--adapter", str(adapter))
    assert r.exit_code == 0, r.output
    r = _capture(llama, prompts_file, tmp_path / "base.zarr")
    assert r.exit_code == 0, r.output
    merged, base = Store.open(str(tmp_path / "merged.zarr")), Store.open(str(tmp_path / "base.zarr"))
    src = merged.meta["source"]
    assert src["adapter"]["fingerprint"] == fingerprint(adapter) and src["adapter"]["r"] == 4
    assert src["base_weights_fingerprint"] == base.meta["source"]["weights_fingerprint"] == fingerprint(llama)
    assert src["weights_fingerprint"].startswith("merged:") and src["weights_fingerprint"] != fingerprint(llama)
    assert merged.meta["self_check"]["hidden_max_abs_diff"] == 0.0  # hooks = the merged model's own states
    h_merged, h_base = merged.read("hidden")[-1], base.read("hidden")[-1]
    assert h_merged.shape == h_base.shape and abs(h_merged - h_base).max() > 1e-3  # the adapter changed the model


def test_an_adapter_of_another_base_or_no_adapter_is_refused_in_one_line(checkpoint, adapter, prompts_file,
                                                                         tmp_path):
    gpt2 = checkpoint("gpt2")  # no q_proj/v_proj: not this adapter's base
    assert_refused(_capture(gpt2, prompts_file, tmp_path / "s.zarr", "--adapter", str(adapter)),
                   "cannot be merged into this model", "is MODEL its base?")
    assert_refused(_capture(gpt2, prompts_file, tmp_path / "s.zarr", "--adapter", str(tmp_path)),
                   "no adapter_config.json there")
    assert not (tmp_path / "s.zarr").exists()
