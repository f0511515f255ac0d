"""The store contract: lossless bf16, whole shards per unit, position rules, readable by plain zarr and xarray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import PROMPTS
from spinal.capture import capture
from spinal.config import CaptureConfig
from spinal.store.layout import plan_layout
from spinal.store.contract import Store, decode, encode


def test_bfloat16_round_trip_is_bit_exact():
    x = torch.randn(1000, 17).to(torch.bfloat16) * 1e3
    x[0, 0] = float("inf")
    raw = encode(x, "bfloat16")
    assert raw.dtype == np.uint16
    back = torch.from_numpy(decode(raw, "bfloat16")).to(torch.bfloat16)
    assert torch.equal(back.view(torch.int16), x.view(torch.int16))


def test_dtype_auto_computes_in_float32_on_cpu_and_says_so(checkpoint, prompts_file, tmp_path, caplog):
    """A bf16 checkpoint on CPU: 'auto' (the default) computes and stores float32, since CPUs have no fast bf16
    matmul; --dtype bfloat16 keeps the checkpoint's (next test)."""
    import logging

    ckpt = checkpoint("llama", dtype=torch.bfloat16)
    out = str(tmp_path / "auto.zarr")
    with caplog.at_level(logging.INFO, logger="spinal.capture.load"):
        capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, batch_size=2))
    assert Store.open(out).dtype == "float32"
    assert any("dtype auto on CPU: computing in float32" in r.getMessage() for r in caplog.records)


def test_bf16_capture_keeps_every_bit(checkpoint, prompts_file, tmp_path):
    ckpt = checkpoint("llama", dtype=torch.bfloat16)
    out = str(tmp_path / "bf.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, positions="all", batch_size=1,
                          dtype="bfloat16"))
    store = Store.open(out)
    assert store.dtype == "bfloat16" and store.hidden.dtype == np.uint16
    assert store.hidden.attrs["spinal_dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    raw = store.hidden[...]  # (layer, token, dim) uint16
    seq = store.tokens()["sequence"]
    for i, r in enumerate(PROMPTS):
        ids = tok(r["prompt"])["input_ids"] + tok(r["response"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids])
        with torch.no_grad():
            hs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
        for layer in range(len(hs) - 1):
            want = hs[layer][0].contiguous().view(torch.int16).numpy().view(np.uint16)
            assert np.array_equal(raw[layer][seq == i], want), (layer, i)


def test_unit_layout_owns_whole_shards():
    lengths = [5, 9, 30, 2, 70, 1, 16]
    ids = [list(range(n)) for n in lengths]
    lay = plan_layout(ids, [list(range(n)) for n in lengths], t_chunk=8, t_shard=16, unit_tokens=20)
    covered = np.zeros(lay.n_tokens, dtype=int)
    for u in lay.units:
        assert u.token_start % 16 == 0 and u.token_stop % 16 == 0  # whole shards, so one writer per shard
        covered[u.token_start : u.token_stop] += 1
        owned = lay.sequence[u.token_start : u.token_stop]
        assert set(owned[owned >= 0]) == set(range(u.seq_start, u.seq_stop))  # whole sequences
    assert (covered == 1).all()
    assert (lay.lengths == np.array(lengths)).all()
    assert int((lay.sequence >= 0).sum()) == sum(lengths)
    for s, n in enumerate(lengths):  # each sequence is contiguous at its offset
        assert (lay.sequence[lay.offsets[s] : lay.offsets[s] + n] == s).all()


@pytest.mark.parametrize(
    "rule, expect",
    [
        ("all", lambda n, h: list(range(n))),
        ("all-but-first", lambda n, h: list(range(1, n))),
        ("last:3", lambda n, h: list(range(max(0, n - 3), n))),
        ("response", lambda n, h: list(range(h, n))),
    ],
)
def test_position_rules(rule, expect, checkpoint, prompts_file, tmp_path):
    ckpt = checkpoint("llama")
    out = str(tmp_path / "s.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, positions=rule))
    store = Store.open(out)
    tok = AutoTokenizer.from_pretrained(ckpt)
    t = store.tokens()
    for i, r in enumerate(PROMPTS):
        head = tok(r["prompt"])["input_ids"]
        full = head + tok(r["response"], add_special_tokens=False)["input_ids"]
        want = expect(len(full), len(head))
        assert t["position"][t["sequence"] == i].tolist() == want
        assert t["ids"][t["sequence"] == i].tolist() == [full[p] for p in want]


def test_truncation_is_recorded(checkpoint, prompts_file, tmp_path):
    out = str(tmp_path / "s.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=out, max_length=8,
                          positions="all"))
    store = Store.open(out)
    seqs = store.sequences()
    assert seqs["truncated"].tolist() == [n > 8 for n in seqs["input_length"]]
    assert store.meta["prompts"]["truncated"] == int(seqs["truncated"].sum()) > 0
    assert seqs["length"].max() == 8


def test_plain_zarr_and_xarray_read_the_store(checkpoint, prompts_file, tmp_path):
    xr = pytest.importorskip("xarray")
    out = str(tmp_path / "s.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=out))
    g = zarr.open_group(out, mode="r")
    h = g["hidden"]
    assert h.metadata.dimension_names == ("layer", "token", "dim")
    codecs = repr(h.metadata.codecs)
    assert "Crc32cCodec" in codecs and "ZstdCodec" in codecs and "ShardingCodec" in codecs
    ours = np.concatenate([x for x, _ in Store.open(out).iter_layer(2)])
    valid = g["tokens/sequence"][:] >= 0
    assert np.array_equal(h[2][valid], ours)
    ds = xr.open_zarr(out, consolidated=False, zarr_format=3)
    assert ds["hidden"].dims == ("layer", "token", "dim")
    assert np.array_equal(ds["hidden"].isel(layer=2).values[valid], ours)
    assert g.attrs["spinal"]["complete"] is True
    assert g.attrs["spinal"]["source"]["architecture"] == "LlamaForCausalLM"
    for key in ("format_version", "identity", "prompts", "software", "created", "self_check"):
        assert key in g.attrs["spinal"]


def test_chat_template_and_response_positions(checkpoint, prompts_file, tmp_path):
    import shutil

    ckpt = tmp_path / "chat"
    shutil.copytree(checkpoint("llama"), ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    tok.save_pretrained(ckpt)
    out = str(tmp_path / "s.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(prompts_file), out=out, chat_template=True,
                          positions="response"))
    t = Store.open(out).tokens()
    for i, r in enumerate(PROMPTS):
        stored = tok.decode(t["ids"][t["sequence"] == i].tolist()).replace(" ", "")
        assert stored == r["response"].replace(" ", "")  # exactly the reply, after "[assistant]"
    head = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]["prompt"]}], tokenize=True,
                                   add_generation_prompt=True)
    head = head["input_ids"] if hasattr(head, "keys") else head
    assert t["position"][t["sequence"] == 0][0] == len(head)


def test_store_on_an_fsspec_url(checkpoint, prompts_file, tmp_path):
    """A store behind an fsspec URL (here file://) captures in units and reads back like a local one."""
    url = f"file://{tmp_path}/remote.zarr"
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=url, unit_tokens=16))
    s = Store.open(url)
    assert s.complete and s.meta["n_units"] > 1
    local = str(tmp_path / "local.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(prompts_file), out=local, unit_tokens=16))
    a = np.concatenate([h for h, _ in s.iter_layer(2)])
    b = np.concatenate([h for h, _ in Store.open(local).iter_layer(2)])
    assert np.array_equal(a, b)


def test_the_self_check_probes_the_first_prompts_cut_short_and_right_padded(llama, tmp_path, monkeypatch):
    """The probe runs before the first unit with nothing to overlap it, so it is short; its second row stays shorter
    than its first, so the padding mask is part of what is checked even when every prompt is long."""
    import spinal.capture.session as session_mod
    from conftest import write_jsonl
    from spinal.capture.session import PROBE_TOKENS

    seen = []
    real = session_mod.run_self_check

    def spy(model, anatomy, lens, input_ids, attention_mask, dtype):
        seen.append(attention_mask.sum(dim=1).tolist())
        return real(model, anatomy, lens, input_ids, attention_mask, dtype)

    monkeypatch.setattr(session_mod, "run_self_check", spy)
    prompts = write_jsonl(tmp_path / "long.jsonl", [{"id": f"p{i}", "prompt": c * 150} for i, c in enumerate("abc")])
    out = str(tmp_path / "s.zarr")
    capture(CaptureConfig(model=str(llama), prompts=str(prompts), out=out, batch_size=2))
    assert seen == [list(PROBE_TOKENS)]  # rows of 64 and 48 valid tokens: the second right-padded
    s = Store.open(out)
    assert s.meta["self_check"]["hidden_max_abs_diff"] == 0.0 and s.complete
    assert s.read("tokens/sequence").max() == 2  # every prompt is still captured whole, not cut like the probe
    assert (s.read("sequences/length") >= 150).all()
