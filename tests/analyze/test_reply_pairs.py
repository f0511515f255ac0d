"""Chosen against rejected replies inside one checkpoint: two token streams of the same prompts, compared paired by
prompt (Δa with the same prompt blocks resampled on both sides, ΔL from per-prompt differences), what needs the
identical tokens skipped with its reason, and the pairing recorded in the comparison and said in the report."""

from __future__ import annotations

import json
from dataclasses import replace

import datasets
import numpy as np
import pytest
from typer.testing import CliRunner

from spinal.analyze.compare.paired import compare
from spinal.analyze.trace import analyze
from spinal.analyze.trace_format import Trace
from spinal.capture import capture
from spinal.cli.app import app
from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import InputError

N = 24  # prompts: 16 blocks of one or two prompts each


@pytest.fixture(scope="module")
def sides(tmp_path_factory, checkpoint):
    """One tiny checkpoint's chosen and rejected stores (`--reply both`, reply tokens only) and their traces, both
    analyzed under the checkpoint's one label, as a user analyzing two stores of one checkpoint would."""
    d = tmp_path_factory.mktemp("sides")
    datasets.Dataset.from_dict({
        "prompt": [f"Question {i}: what is {i} plus {i % 5}?" for i in range(N)],
        "chosen": [f" It is {i + i % 5}, since adding {i % 5} to {i} gives {i + i % 5}." for i in range(N)],
        "rejected": [" I do not know." if i % 2 else f" Maybe {i * 3}." for i in range(N)],
    }).save_to_disk(str(d / "prefs"))
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(d / "prefs"), reply="both", positions="reply",
                          out=str(d / "base.zarr"), unit_tokens=128))
    out = {"dir": d}
    for side in ("chosen", "rejected"):
        store = str(d / f"base-{side}.zarr")
        out[side] = analyze(AnalyzeConfig(store=store, out=str(d / side), n_boot=80, workers=1,
                                          calibration_sims=16), label="base")
        out[side].save(d / side)
    return out


def test_chosen_and_rejected_of_one_checkpoint_compare_paired_by_prompt(sides, tmp_path):
    """`spinal compare CHOSEN REJECTED --stores …`: paired by prompt, recorded; Δa is the difference of the traces'
    a, ΔL the mean over prompts of each prompt's difference in mean L; positions and cross-readout skipped with
    their reason; the token counts differ and the caveat names both; the report says how the sides were paired."""
    d, ch, rj = sides["dir"], sides["chosen"], sides["rejected"]
    assert ch.meta["tokens_sha256"] != rj.meta["tokens_sha256"]
    assert ch.meta["prompt_ids_sha256"] == rj.meta["prompt_ids_sha256"]
    r = CliRunner().invoke(app, ["compare", str(d / "chosen"), str(d / "rejected"), "-o", str(tmp_path / "c"),
                                 "--stores", str(d / "base-chosen.zarr"), "--stores", str(d / "base-rejected.zarr"),
                                 "--n-boot", "300"])
    assert r.exit_code == 0, r.output
    assert "paired by prompt" in r.stderr
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert doc["pairing"] == ["prompt"] and doc["labels"] == ["base-chosen", "base-rejected"]
    pair = doc["pairs"][0]
    assert pair["pairing"] == "prompt" and set(pair["skipped"]) == {"positions", "cross_readout"}
    assert "the tokens differ" in pair["skipped"]["positions"]
    assert not (tmp_path / "c" / "positions.parquet").exists() and "shifted_share" not in pair
    assert (pair["tokens_ref"], pair["tokens_other"]) == (ch.meta["n_tokens"], rj.meta["n_tokens"])
    assert ch.meta["n_tokens"] != rj.meta["n_tokens"]
    assert f"{ch.meta['n_tokens']:,} tokens" in pair["token_count_caveat"]
    import pandas as pd

    t = pd.read_parquet(tmp_path / "c" / "compare.parquet")
    np.testing.assert_allclose(t["d_a"], rj.table["a"].to_numpy() - ch.table["a"].to_numpy())
    by_prompt = rj.seq_L - ch.seq_L  # row s of both is prompt s
    np.testing.assert_allclose(t["d_L"].to_numpy()[:-1], np.nanmean(by_prompt, axis=0), rtol=1e-12)
    r = CliRunner().invoke(app, ["report", str(d / "chosen"), str(d / "rejected"), "--compare", str(tmp_path / "c"),
                                 "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r" / "report.html").read_text()
    assert "base-rejected − base-chosen is paired by prompt, not by token" in html
    assert "positions not computed" in html and "a&#x27;s estimate depends on the token count" in html


def test_a_side_paired_by_prompt_with_itself_gives_zero_with_every_interval_covering_zero(sides):
    ch = sides["chosen"]
    copy = replace(ch, meta={**ch.meta, "label": "copy"})
    c = compare([ch, copy], CompareConfig(n_boot=200, pairing="prompt"))
    t, s = c.pairs[0].table, c.pairs[0].summary
    assert s["pairing"] == "prompt" and s["token_count_caveat"] is None
    assert (t["d_a"] == 0).all() and (t["d_L"].dropna() == 0).all()
    for x in ("a", "L"):
        lo, hi = t[f"d_{x}_lo"].dropna(), t[f"d_{x}_hi"].dropna()
        assert len(lo) == len(t) - (x == "L") and (lo <= 0).all() and (hi >= 0).all()
    assert s["onset_a"] is None and s["onset_L"] is None


def test_a_known_difference_between_the_sides_is_found_where_it_was_put(sides):
    """The rejected side with a raised by 0.3 from layer 2 on (replicates and leave-one-out values with it) and L
    raised by 0.05 on the even prompts only: onset at layer 2, ΔL = 0.025 at every step, all Holm-significant."""
    ch, rj = sides["chosen"], sides["rejected"]
    layers = ch.table["layer"].to_numpy()
    shift = np.where(layers >= 2, 0.3, 0.0)
    tab = ch.table.assign(a=ch.table["a"] + shift)
    seq = ch.seq_L + np.where(np.arange(N) % 2 == 0, 0.05, 0.0)[:, None]
    jk = ch.jackknife + shift[:, None] if ch.jackknife.size else ch.jackknife
    moved = Trace(tab, {**ch.meta, "label": "moved", "reply": "rejected", "tokens_sha256": rj.meta["tokens_sha256"]},
                  ch.boot + shift[:, None], seq, ch.spectra, jk)
    c = compare([ch, moved], CompareConfig(n_boot=300))
    t, s = c.pairs[0].table, c.pairs[0].summary
    assert s["pairing"] == "prompt" and s["onset_a"] == 2
    np.testing.assert_allclose(t["d_a"], shift, atol=1e-12)
    assert (t.loc[layers >= 2, "p_a_holm"] < 0.05).all() and (t.loc[layers < 2, "d_a"] == 0).all()
    np.testing.assert_allclose(t["d_L"].dropna(), 0.025, atol=1e-12)
    assert (t["p_L_holm"].dropna() < 0.05).all()
    assert (t["d_L_lo"].dropna() < 0.025).all() and (t["d_L_hi"].dropna() > 0.025).all()


def test_what_cannot_be_paired_by_prompt_is_refused_with_the_way_out(sides):
    ch, rj = sides["chosen"], sides["rejected"]
    shuffled = replace(rj, meta={**rj.meta, "prompt_ids_sha256": "other order"})
    with pytest.raises(InputError, match="different token streams and different prompts"):
        compare([ch, shuffled])
    neither = replace(rj, meta={**rj.meta, "reply": None})  # same prompts, but not recorded as the other side
    with pytest.raises(InputError, match="pass --pairing prompt"):
        compare([ch, neither])
    assert compare([ch, neither], CompareConfig(n_boot=50, pairing="prompt")).meta["pairing"] == ["prompt"]
    with pytest.raises(InputError, match="different token streams"):
        compare([ch, rj], CompareConfig(n_boot=50, pairing="token"))
    old = replace(rj, meta={k: v for k, v in rj.meta.items() if k != "prompt_ids_sha256"})
    with pytest.raises(InputError, match="re-analyze both stores"):
        compare([ch, old])
    fewer = replace(rj, meta={**rj.meta, "blocks_used": 8})
    with pytest.raises(InputError, match="same prompts in the same blocks"):
        compare([ch, fewer])
