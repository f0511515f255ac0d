"""Captured states and the stored lens equal Hugging Face's own hidden states and logits, per architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ARCHS, PROMPTS
from spinal.capture import capture
from spinal.config import CaptureConfig
from spinal.store.contract import Store


def _reference(ckpt, text_rows, positions_all=True):
    """HF output_hidden_states and logits per prompt, unbatched (batch of one, no padding)."""
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    out = []
    for r in text_rows:
        ids = torch.tensor([tok(r["prompt"])["input_ids"]])
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        out.append(([h[0] for h in o.hidden_states], o.logits[0], model))
    return out


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("batch_size", [1, 3])
def test_capture_matches_hf(arch, batch_size, checkpoint, prompts_file, tmp_path):
    ckpt = checkpoint(arch)
    rows = [{"id": r["id"], "prompt": r["prompt"]} for r in PROMPTS]
    cfg = CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=str(tmp_path / "s.zarr"),
                        positions="all", batch_size=batch_size, unit_tokens=32)
    # prompts_file carries responses; capture the prompt only to compare with the reference
    from conftest import write_jsonl

    cfg = CaptureConfig(**{**cfg.__dict__, "prompts": str(write_jsonl(tmp_path / "p.jsonl", rows))})
    capture(cfg)
    store = Store.open(cfg.out)
    ref = _reference(ckpt, rows)
    n_layers = len(ref[0][0])
    assert store.layers == list(range(n_layers))
    seq_all = store.tokens()["sequence"]
    for layer in store.layers:
        got = np.concatenate([h for h, _ in store.iter_layer(layer)])
        seq = np.concatenate([s for _, s in store.iter_layer(layer)])
        assert np.array_equal(seq, seq_all[seq_all >= 0])
        for i, (hs, logits, model) in enumerate(ref):
            mine = torch.from_numpy(got[seq == i])
            want = hs[layer]
            if layer == n_layers - 1:
                # HF's last entry is final-normed in these families: the store keeps the raw block output
                want_raw = want
                normed = model.base_model.get_submodule(
                    [n for n in ("norm", "ln_f", "final_layer_norm") if hasattr(model.base_model, n)][0]
                )(mine)
                assert torch.allclose(normed, want_raw, atol=1e-5, rtol=1e-5)
                assert not torch.allclose(mine, want_raw, atol=1e-3)  # stored state is NOT normed twice
                lens_logits = store.lens().logits(mine)
                assert torch.allclose(lens_logits, logits, atol=1e-4, rtol=1e-4)
            elif batch_size == 1:
                assert torch.equal(mine, want), f"layer {layer} prompt {i} not bit-exact"
            else:
                assert torch.allclose(mine, want, atol=1e-5, rtol=1e-5)


def test_gemma_layer0_is_scaled_embedding(checkpoint, prompts_file, tmp_path):
    """Layer 0 is the input to block 1: for Gemma that is the embedding times √d."""
    ckpt = checkpoint("gemma")
    out = str(tmp_path / "g.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, positions="all"))
    store = Store.open(out)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = torch.from_numpy(store.tokens()["ids"][store.tokens()["sequence"] >= 0].astype(np.int64))
    raw = model.get_input_embeddings().weight.detach()[ids]  # the table row, unscaled
    emb = raw * torch.tensor(ARCHS["gemma"]["hidden_size"] ** 0.5)
    got = torch.from_numpy(np.concatenate([h for h, _ in store.iter_layer(0)]))
    assert torch.allclose(got, emb, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, raw, rtol=1e-2)
    assert store.lens().spec.weight_offset == 1.0


def test_gemma2_softcap_is_in_the_lens(checkpoint, prompts_file, tmp_path):
    ckpt = checkpoint("gemma2")
    out = str(tmp_path / "g2.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out))
    lens = Store.open(out).lens()
    assert lens.spec.logit_softcap == ARCHS["gemma2"]["final_logit_softcapping"]
    h = torch.randn(50, lens.dim) * 100
    assert lens.logits(h).abs().max() <= lens.spec.logit_softcap  # capped, as the model's logits are


def test_gpt2_tied_unembedding_and_layernorm_bias(checkpoint, prompts_file, tmp_path):
    ckpt = checkpoint("gpt2")
    out = str(tmp_path / "g.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, positions="all"))
    store = Store.open(out)
    lens = store.lens()
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert lens.spec.norm == "layer" and lens.spec.has_norm_bias
    assert torch.equal(lens.unembed, model.transformer.wte.weight.detach())
    assert torch.equal(lens.norm_bias, model.transformer.ln_f.bias.detach())
