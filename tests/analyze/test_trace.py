"""A store captured from a tiny random model analyzes end to end, and every number matches an independent reference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import write_jsonl
from references import fisher_rao_reference
from spinal.analyze.contraction.spectrum import fit_spectrum
from spinal.analyze.trace import analyze
from spinal.analyze.trace_format import Trace
from spinal.capture import capture
from spinal.config import AnalyzeConfig, CaptureConfig
from spinal.errors import InputError, StoreError
from spinal.store.contract import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("trace")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly and briefly."}
            for i in range(48)]
    p = write_jsonl(d / "p.jsonl", rows)
    ckpt = checkpoint("gpt2")  # LayerNorm with bias + tied head: the lens is not a bare matmul
    out = str(d / "s.zarr")
    capture(CaptureConfig(model=str(ckpt), prompts=str(p), out=out, unit_tokens=256))
    return out, ckpt


@pytest.fixture(scope="module")
def trace(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "trace"
    return analyze(AnalyzeConfig(store=store[0], out=str(out), n_boot=40, workers=1), label="gpt2")


def _matrix(store_path, layer):
    return np.concatenate([h for h, _ in Store.open(store_path).iter_layer(layer)]).astype(np.float64)


def test_alpha_equals_full_float64_svd_reference(store, trace):
    s = Store.open(store[0])
    for _, row in trace.table.iterrows():
        H = _matrix(store[0], int(row.layer))  # (token, dim)
        Hc = H - H.mean(axis=0)
        sv = np.linalg.svd(Hc, compute_uv=False)  # the independent reference: full float64 SVD
        rms = np.sqrt((H**2).mean(axis=0))
        ref = fit_spectrum(sv**2, n_tokens=H.shape[0], dim=H.shape[1], rms=rms, storage_dtype=s.dtype)
        assert (ref.k_lo, ref.k_hi, ref.spikes) == (row.k_lo, row.k_hi, row.spikes)
        assert ref.status == row.status
        assert row.a == pytest.approx(ref.a_wls, rel=1e-6, abs=1e-9)
        assert row.top1_share == pytest.approx(sv[0] ** 2 / (sv**2).sum(), rel=1e-6)
        np.testing.assert_allclose(trace.spectra[int(row.layer)][: ref.rank], sv[: ref.rank], rtol=1e-6,
                                   atol=1e-8 * sv[0])


def test_transport_equals_brute_force_float64_fisher_rao_with_hf_readout(store, trace):
    """L from the stored lens == float64 arccos formula on logits from the model's own ln_f and head."""
    model = AutoModelForCausalLM.from_pretrained(store[1]).double().eval()
    layers = list(trace.table["layer"])
    with torch.no_grad():
        probs = [torch.softmax(model.lm_head(model.transformer.ln_f(torch.from_numpy(_matrix(store[0], l)))), -1)
                 .numpy() for l in layers]
    for j in range(len(layers) - 1):
        ref = fisher_rao_reference(probs[j], probs[j + 1])
        assert trace.table["L_mean"][j] == pytest.approx(ref.mean(), rel=2e-4)
        assert trace.table["L_q50"][j] == pytest.approx(np.quantile(ref, 0.5), rel=2e-3)
        ent = -(probs[j] * np.log(probs[j])).sum(-1).mean()
        assert trace.table["entropy"][j] == pytest.approx(ent, rel=1e-4)
    assert trace.table["kl_final"].iloc[-1] == pytest.approx(0.0, abs=1e-6)
    assert 0 <= trace.table["L_mean"].min() and trace.table["L_mean"].max() <= np.pi
    assert np.isnan(trace.table["L_mean"].iloc[-1])
    assert trace.meta["path_length"] == pytest.approx(trace.table["L_mean"].sum(skipna=True))
    assert 0 < trace.meta["straightness"] <= 1 + 1e-6  # triangle inequality per token


def test_per_sequence_L_averages_to_token_means(store, trace):
    seq = Store.open(store[0]).tokens()["sequence"]
    counts = np.bincount(seq[seq >= 0])
    weighted = (trace.seq_L * counts[:, None]).sum(0) / counts.sum()
    np.testing.assert_allclose(weighted, trace.table["L_mean"].to_numpy()[:-1], rtol=1e-5)


def test_parallel_workers_give_the_same_trace(store, trace, tmp_path):
    par = analyze(AnalyzeConfig(store=store[0], out=str(tmp_path / "p"), n_boot=40, workers=2), label="gpt2")
    pd.testing.assert_frame_equal(par.table, trace.table, rtol=1e-6)
    np.testing.assert_allclose(par.boot, trace.boot, rtol=1e-9)


def test_save_load_round_trip_and_recorded_options(trace, tmp_path):
    trace.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    pd.testing.assert_frame_equal(back.table, trace.table)
    np.testing.assert_array_equal(back.boot, trace.boot)
    meta = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert meta["options"]["n_boot"] == 40 and meta["options"]["seed"] == 0
    assert meta["window_rule"].startswith("auto") and "rank-decay" in meta["alpha_name"]
    assert pd.read_csv(tmp_path / "t" / "trace.csv").shape[0] == len(trace.table)
    # N > 8·d: no jackknife was run, so none is kept (analyze/contraction/calibration.py)
    assert meta["n_tokens"] > 8 * 64 and trace.jackknife.size == 0 and not (tmp_path / "t" / "jackknife.parquet").exists()
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        trace.save(tmp_path / "t")


def test_lens_token_subsample_is_seeded_and_recorded(store, tmp_path):
    cfg = dict(store=store[0], out=str(tmp_path / "x"), n_boot=0, workers=1, lens_tokens=300, null_splits=0,
               lens_precision=0)  # exactly lens_tokens
    a = analyze(AnalyzeConfig(**cfg))
    b = analyze(AnalyzeConfig(**cfg))
    assert a.meta["lens_tokens"] == 300
    pd.testing.assert_frame_equal(a.table, b.table)
    full = analyze(AnalyzeConfig(**{**cfg, "lens_tokens": 0}))
    assert full.meta["lens_tokens"] == full.meta["n_tokens"] > 300
    np.testing.assert_allclose(a.table["a"], full.table["a"])  # the spectrum always uses every token


def test_newer_trace_format_is_refused(trace, tmp_path):
    trace.save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "trace.json").read_text())
    meta["trace_format"] = 99
    (tmp_path / "t" / "trace.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="upgrade spinal"):
        Trace.load(tmp_path / "t")


def test_incomplete_store_is_refused(store, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "inc.zarr"
    shutil.copytree(store[0], copy)
    g = zarr.open_group(str(copy), mode="r+")
    g["units/done"][0] = 0
    with pytest.raises(StoreError, match="incomplete"):
        analyze(AnalyzeConfig(store=str(copy), out=str(tmp_path / "o"), workers=1))


def test_companions_on_a_seeded_subset_match_brute_force(store, tmp_path):
    from spinal.analyze.transport.lens_pass import token_subsample

    tr = analyze(AnalyzeConfig(store=store[0], out=str(tmp_path / "c"), n_boot=0, null_splits=0, workers=1,
                               companion_tokens=500))
    assert tr.meta["companion_tokens"] == 500 and tr.meta["lens_tokens"] == tr.meta["n_tokens"]
    s = Store.open(store[0])
    picked = token_subsample(s, 500, 0, purpose=4)  # the documented seeded draw
    model = AutoModelForCausalLM.from_pretrained(store[1]).double().eval()
    li = s.layer_index(2)
    h = torch.from_numpy(s.hidden[li][picked].astype(np.float64))
    with torch.no_grad():
        p = torch.softmax(model.lm_head(model.transformer.ln_f(h)), -1).numpy()
    ent = -(p * np.log(p)).sum(-1).mean()
    assert tr.table["entropy"][2] == pytest.approx(ent, rel=1e-4)
    full = tr.table["L_mean"][2]
    assert full == pytest.approx(analyze(AnalyzeConfig(store=store[0], out=str(tmp_path / "d"), n_boot=0,
                                                       null_splits=0, workers=1)).table["L_mean"][2], rel=1e-6)


def test_cluster_se_is_the_spread_of_the_token_mean_over_repeated_samples():
    """L_se: tokens of one sequence share a component, so the mean over tokens varies more than √(var/N) says;
    the clustered SE matches its actual spread over 2000 seeded datasets (and the naive one does not)."""
    from spinal.analyze.transport.lens_size import cluster_se

    rng = np.random.default_rng(0)
    means, ses, naive = [], [], []
    for _ in range(2000):
        counts = rng.integers(5, 40, size=60)
        seq = np.repeat(np.arange(60), counts)
        x = rng.normal(size=60)[seq] + rng.normal(size=seq.size)  # sequence effect + token noise
        sums = np.bincount(seq, weights=x)
        means.append(x.mean())
        ses.append(cluster_se(sums, counts))
        naive.append(x.std(ddof=1) / np.sqrt(x.size))
    actual = np.std(means, ddof=1)
    assert abs(np.median(ses) / actual - 1) < 0.1
    assert np.median(naive) < 0.5 * actual


@pytest.mark.parametrize("n_sub", [0, 300])
def test_lens_split_by_token_ranges_equals_one_pass(store, n_sub):
    """Lens tasks split by tokens, across unit boundaries and in several chunks each, merge to the one-pass result."""
    from spinal.analyze.transport.lens_pass import lens_pass, selected_tokens, token_ranges, token_subsample

    s = Store.open(store[0])
    sub = token_subsample(s, n_sub, seed=3)
    sel = selected_tokens(s, sub)
    layers = s.layers
    kw = dict(layers=layers, chunk_mib=1, subsample=sub, companions=None if sub is None else sub[::3])
    whole = lens_pass(store[0], (0, int(s.hidden.shape[1])), **kw)
    ranges = token_ranges(sel, 5)
    assert len(ranges) == 5 and ranges[0][0] == sel[0] and ranges[-1][1] == sel[-1] + 1
    starts = {u.token_start for u in s.units}
    assert any(lo not in starts for lo, _ in ranges[1:])  # the split does not follow units
    parts = [lens_pass(store[0], r, **kw) for r in ranges]
    assert [p.n for p in parts] == [len(x) for x in np.array_split(sel, 5)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged.n == whole.n == sel.size and merged.n_companion == whole.n_companion
    np.testing.assert_array_equal(merged.seq, whole.seq)
    for a, b in zip(merged.steps_L, whole.steps_L):
        np.testing.assert_array_equal(a, b)
    for key in whole.sums:
        np.testing.assert_allclose(merged.sums[key], whole.sums[key], rtol=1e-6)  # float32 chunk sums, regrouped


def _mean_L(store_path, rows, layers):
    """Mean L per step over exactly ``rows`` (flat token indices), by the lens pass on that explicit subsample."""
    from spinal.analyze.transport.lens_pass import lens_pass

    part = lens_pass(store_path, (0, int(rows.max()) + 1), layers, chunk_mib=64, subsample=np.sort(rows))
    return np.array([float(np.mean(x, dtype=np.float64)) for x in part.steps_L])


def test_the_lens_subsample_grows_from_its_pilot_until_the_precision_target_holds(store, tmp_path, caplog):
    """The pilot (lens_tokens) misses a target that a larger subsample meets: the trace grows it, by a prefix of
    the other tokens in the seeded extension order, reads L on exactly pilot ∪ prefix, and records what it did."""
    from spinal.analyze.transport.lens_pass import extension_order, token_subsample
    from spinal.analyze.seeds import Purpose

    cfg = dict(store=store[0], out=str(tmp_path / "g"), n_boot=0, workers=1, lens_tokens=300, null_splits=0)
    pilot = analyze(AnalyzeConfig(**cfg, lens_precision=0))
    p0 = pilot.meta["L_precision"]
    target = round(0.7 * p0, 4)  # the pilot's precision misses it; √2–4× the tokens should meet it
    grown = analyze(AnalyzeConfig(**cfg, lens_precision=target))
    m, n_all = grown.meta, grown.meta["n_tokens"]
    assert (m["lens_pilot"], m["L_precision_target"]) == (300, target) and m["lens_rounds"] >= 1
    assert 300 < m["lens_tokens"] < n_all and m["L_precision"] <= target
    s = Store.open(store[0])
    sub = token_subsample(s, 300, 0)
    rows = np.concatenate([sub, extension_order(s, sub, 0)[: m["lens_tokens"] - 300]])
    np.testing.assert_allclose(grown.table["L_mean"].to_numpy()[:-1], _mean_L(store[0], rows, m["layers"]),
                               rtol=1e-6)
    assert np.unique(rows).size == rows.size and Purpose.LENS_EXTENSION == 9  # recorded history: never renumbered
    assert m["companion_tokens"] == pilot.meta["companion_tokens"] == 300  # companions stay the pilot's
    np.testing.assert_array_equal(grown.table["js"], pilot.table["js"])

    # a floor (what `spinal run` passes from its reference) reads the same tokens, nested in one order
    floored = analyze(AnalyzeConfig(**cfg, lens_precision=0), lens_floor=m["lens_tokens"])
    assert floored.meta["lens_tokens"] == m["lens_tokens"] and floored.meta["lens_floor"] == m["lens_tokens"]
    np.testing.assert_array_equal(floored.table["L_mean"], grown.table["L_mean"])

    # a target no subsample of these prompts reaches: every token is used, and the warning says why
    with caplog.at_level("WARNING"):
        every = analyze(AnalyzeConfig(**cfg, lens_precision=1e-6, companion_tokens=0))
    assert every.meta["lens_tokens"] == n_all and every.meta["companion_tokens"] == n_all
    assert "more prompts, not more tokens" in caplog.text


@pytest.mark.parametrize("bad", [-0.01, 1.0, float("nan")])
def test_a_precision_target_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match="lens_precision"):
        AnalyzeConfig(store="s", out="t", lens_precision=bad)
