"""The field's measures end to end on two tiny checkpoints' stores: the trace's effective rank, RankMe and α-ReQ columns
and replicates, their paired Δ, linear CKA per layer in `compare` (against the direct float64 formula), the report's
rows, and traces of the previous format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import write_jsonl
from test_cka import direct
from test_ranks import reference
from spinal.analyze.compare.cka import cka_tasks
from spinal.analyze.compare.paired import compare
from spinal.analyze.compare.pipeline import comparison
from spinal.analyze.report.tables import pair_table, trace_table
from spinal.analyze.trace import analyze
from spinal.analyze.trace_format import Trace
from spinal.capture import capture
from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import InputError
from spinal.store.contract import Store


def _rows(store: str, layer: int) -> np.ndarray:
    return np.concatenate([h for h, _ in Store.open(store).iter_layer(layer)]).astype(np.float64)


def _copy(t: Trace, label: str) -> Trace:
    return Trace(t.table, {**t.meta, "label": label}, t.boot, t.seq_L, t.spectra, t.jackknife, t.rank_boot)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("cka")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(24)]
    p = write_jsonl(d / "p.jsonl", rows)
    out = {}
    for name, seed in (("base", 0), ("other", 1)):
        s = str(d / f"{name}.zarr")
        capture(CaptureConfig(model=str(checkpoint("llama", seed=seed)), prompts=str(p), out=s, unit_tokens=256))
        out[name] = (s, analyze(AnalyzeConfig(store=s, out=str(d / name), n_boot=40, workers=1), label=name))
    other = write_jsonl(d / "q.jsonl", rows[:-1])
    s = str(d / "short.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(other), out=s, unit_tokens=256))
    out["short"] = s
    return out


def test_compare_adds_cka_per_layer_from_both_stores(stores):
    (sa, ta), (sb, tb) = stores["base"], stores["other"]
    cfg = CompareConfig(n_boot=50, cross_readout_tokens=0, position_tokens=0, cka_tokens=0)
    c = comparison([ta, tb], cfg, stores=[sa, sb], workers=1)
    assert c.meta["cka_tokens"] == int(Store.open(sa).meta["n_tokens_valid"])
    t = c.pairs[0].table
    assert list(t["layer"]) == list(ta.table["layer"])
    assert t["cka"].between(0, 1).all() and (t["cka_lo"] <= t["cka"]).all() and (t["cka"] <= t["cka_hi"]).all()
    assert (t["cka"] < 1 - 1e-6).any()  # two independently initialised models
    assert "plain" in c.meta["cka"]
    # layer by layer, the direct formula on every stored token
    for layer in (0, int(t["layer"].iloc[-1])):
        x, y = _rows(sa, layer), _rows(sb, layer)
        assert t.loc[t["layer"] == layer, "cka"].item() == pytest.approx(direct(x, y), rel=1e-8)
    # a checkpoint against itself: 1 at every layer
    same = comparison([ta, _copy(ta, "copy")], cfg, stores=[sa, sa], workers=1)
    np.testing.assert_allclose(same.pairs[0].table["cka"], 1.0, atol=1e-12)
    assert "cka" not in comparison([ta, tb], CompareConfig(n_boot=50, cross_readout_tokens=0, position_tokens=0,
                                                           cka=False), stores=[sa, sb]).pairs[0].table


def test_a_cka_token_subsample_equals_the_direct_formula_on_the_same_tokens(stores):
    (sa, ta), (sb, tb) = stores["base"], stores["other"]
    n = int(Store.open(sa).meta["n_tokens_valid"])
    k = n // 3
    tasks = cka_tasks(sa, [sb], [0, 1], 16, tokens=k, seed=3)
    rows = tasks[0][1]["rows"]
    assert rows.size == k and all(np.array_equal(kw["rows"], rows) for _, kw in tasks)  # one subsample for all
    seq = Store.open(sa).read("tokens/sequence")
    valid = np.flatnonzero(seq >= 0)
    pick = np.searchsorted(valid, rows)  # the subsample's places among the valid tokens _rows returns
    c = comparison([ta, tb], CompareConfig(n_boot=50, cross_readout_tokens=0, position_tokens=0, cka_tokens=k,
                                           seed=3), stores=[sa, sb], workers=1)
    assert c.meta["cka_tokens"] == k
    for layer in (0, 1):
        x, y = _rows(sa, layer), _rows(sb, layer)
        got = c.pairs[0].table.loc[c.pairs[0].table["layer"] == layer, "cka"].item()
        assert got == pytest.approx(direct(x[pick], y[pick]), rel=1e-8)
        assert got != pytest.approx(direct(x, y), rel=1e-8)
    assert cka_tasks(sa, [sb], [0], 16, tokens=k, seed=4)[0][1]["rows"].tolist() != rows.tolist()  # seeded


def test_stores_of_other_token_streams_are_refused(stores):
    with pytest.raises(InputError, match="different token streams"):
        cka_tasks(stores["base"][0], [stores["other"][0], stores["short"]], [0, 1], 16)


def test_trace_columns_equal_a_direct_eigendecomposition_and_have_intervals(stores):
    s, t = stores["base"]
    table = t.table
    np.testing.assert_allclose(table["alpha_req"], 2 * table["a"])
    np.testing.assert_allclose(table["alpha_req_lo"], 2 * table["a_lo"])
    for i, layer in enumerate(table["layer"]):
        erank, rankme = reference(_rows(s, int(layer)))
        assert table["erank"].iloc[i] == pytest.approx(erank, rel=1e-8)
        # RankMe sums σ = √λ: from a Gram, each small σ is exact to ~√ε·σ₁ only (the embedding layer is rank-deficient)
        assert table["rankme"].iloc[i] == pytest.approx(rankme, rel=1e-6)
    for name in ("erank", "rankme"):
        assert (table[f"{name}_lo"] < table[name]).all() and (table[name] < table[f"{name}_hi"]).all()
        assert t.rank_boot[name].shape == t.boot.shape


def test_saved_traces_keep_the_replicates_and_the_previous_format_still_loads(stores, tmp_path):
    _, t = stores["base"]
    back = Trace.load(t.save(tmp_path / "new"))
    for name in ("erank", "rankme"):
        np.testing.assert_array_equal(back.rank_boot[name], t.rank_boot[name])
    new = [c for c in t.table.columns if c.startswith(("erank", "rankme", "alpha_req"))]
    written = Trace(t.table.drop(columns=new), {**t.meta, "trace_format": 4}, t.boot, t.seq_L, t.spectra, t.jackknife)
    prev = Trace.load(written.save(tmp_path / "old"))  # a trace as the previous SPINAL wrote it
    assert prev.rank_boot == {} and not set(new) & set(prev.table.columns)
    assert "effective rank" not in trace_table(prev) and "contraction" in trace_table(prev)
    with pytest.raises(InputError, match="trace format 5.*4|trace format 4.*5"):
        compare([t, _copy(prev, "old")], CompareConfig(n_boot=20))


def test_paired_rank_changes_and_the_report_rows(stores):
    (sa, ta), (sb, tb) = stores["base"], stores["other"]
    same = compare([ta, _copy(ta, "copy")], CompareConfig(n_boot=20)).pairs[0].table
    for name in ("erank", "rankme"):
        assert (same[f"d_{name}"] == 0).all() and (same[f"p_{name}_holm"] == 1).all()
    c = comparison([ta, tb], CompareConfig(n_boot=50, cross_readout_tokens=0, position_tokens=0),
                   stores=[sa, sb], workers=1)
    t = c.pairs[0].table
    np.testing.assert_allclose(t["d_erank"], tb.table["erank"] - ta.table["erank"])
    assert (t["d_erank_lo"] < t["d_erank"]).all() and (t["d_rankme"] < t["d_rankme_hi"]).all()
    html = pair_table(c.pairs[0])
    assert "CKA [95% CI]" in html and "Δ eff. rank [95% CI]" in html and "Δ RankMe [95% CI]" in html
    assert "effective rank, RankMe" in trace_table(ta)


def test_the_verdict_names_the_field_measures_and_the_model_free_reading(stores):
    from spinal.analyze.report.verdict import pair_verdict

    (sa, ta), (sb, tb) = stores["base"], stores["other"]
    c = comparison([ta, tb], CompareConfig(n_boot=50, cross_readout_tokens=0, position_tokens=0),
                   stores=[sa, sb], workers=1)
    p = c.pairs[0]
    v = pair_verdict(p, ta, tb, None)
    field = dict(v.more)["field's measures"]
    low = p.table.loc[p.table["cka"].idxmin()]
    assert f"lowest at layer {int(low['layer'])}: {low['cka']:.3f}" in field
    n = int((p.table["p_erank_holm"] < 0.05).sum())
    assert f"effective rank changes at {n} of {len(p.table)} layers" in field
    bent = Trace(ta.table.assign(status="poor-fit"), ta.meta, ta.boot, ta.seq_L, ta.spectra, ta.jackknife,
                 ta.rank_boot)  # no layer's fit is ok: the caveat says what the model-free rank says there
    caveat = pair_verdict(p, bent, tb, None).caveat
    assert caveat is not None and "not one exponent; the effective rank, which assumes no power law, changes" in caveat
