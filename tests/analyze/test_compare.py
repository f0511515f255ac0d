"""Comparisons: a checkpoint against itself gives Δ = 0 with CIs covering 0; real differences are localized; bad pairs refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_checkpoint, write_jsonl
from spinal.analyze.compare.aggregates import terminal_layers
from spinal.analyze.compare.paired import compare, holm
from spinal.analyze.compare.comparison import Comparison
from spinal.analyze.trace import analyze
from spinal.analyze.trace_format import Trace
from spinal.analyze.compare.weights import block_sq_change
from spinal.capture import capture
from spinal.cli.app import app
from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import InputError
from spinal.store.contract import Store


@pytest.fixture(scope="module")
def traces(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("cmp")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(40)]
    p = write_jsonl(d / "p.jsonl", rows)
    out = {}
    for name, seed in (("base", 0), ("other", 1)):
        s = str(d / f"{name}.zarr")
        capture(CaptureConfig(model=str(checkpoint("llama", seed=seed)), prompts=str(p), out=s, unit_tokens=256))
        out[name] = analyze(AnalyzeConfig(store=s, out=str(d / name), n_boot=60, workers=1), label=name)
    out["dir"] = d
    return out


def test_self_comparison_is_zero_and_cis_cover_zero(traces):
    same = Trace(traces["base"].table, {**traces["base"].meta, "label": "copy"}, traces["base"].boot,
                 traces["base"].seq_L, traces["base"].spectra)
    c = compare([traces["base"], same], CompareConfig(n_boot=200))
    t = c.pairs[0].table
    assert (t["d_a"] == 0).all() and (t["d_L"].dropna() == 0).all()
    for x in ("a", "L"):
        lo, hi = t[f"d_{x}_lo"].dropna(), t[f"d_{x}_hi"].dropna()
        assert len(lo) > 0 and (lo <= 0).all() and (hi >= 0).all()
        assert (t[f"p_{x}_holm"].dropna() == 1).all()
    assert c.pairs[0].summary["onset_a"] is None and c.pairs[0].summary["onset_L"] is None
    assert c.pairs[0].summary["delta_align"] == 0


def test_different_checkpoints_differ(traces):
    c = compare([traces["base"], traces["other"]], CompareConfig(n_boot=200))
    t = c.pairs[0].table
    want = traces["other"].table["a"] - traces["base"].table["a"]
    np.testing.assert_allclose(t["d_a"], want)
    assert np.isclose(t["loc_a"].sum(), 1.0)
    # two independently initialized models move a by far more than the split-half noise
    assert (t["d_a"].abs() > t["null_a"]).any()
    share = c.pairs[0].summary["terminal_share_a"]
    assert share == pytest.approx(t.loc[t["terminal"], "loc_a"].sum())


def test_other_token_stream_is_refused(traces, checkpoint, tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "z", "prompt": "An entirely different prompt set."}] * 1
                    + [{"id": f"y{i}", "prompt": f"Other {i}"} for i in range(12)])
    s = str(tmp_path / "x.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(p), out=s))
    t = analyze(AnalyzeConfig(store=s, out=str(tmp_path / "t"), n_boot=60, workers=1), label="x")
    with pytest.raises(InputError, match="different token streams"):
        compare([traces["base"], t])


def test_cli_compare_refusal_is_one_line(traces, tmp_path):
    traces["base"].save(tmp_path / "a")
    t = traces["other"]
    Trace(t.table, {**t.meta, "tokens_sha256": "different"}, t.boot, t.seq_L, t.spectra).save(tmp_path / "b")
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_cli_compare_json_is_the_written_compare_json(traces, tmp_path):
    import json

    traces["base"].save(tmp_path / "a")
    traces["other"].save(tmp_path / "b")
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown == json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [p["other"] for p in shown["pairs"]] == [traces["other"].label]


def test_holm_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted: 0.005·4=0.02, 0.01·3=0.03, 0.03·2=0.06, 0.04·1=0.04 -> monotone max: 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])


def test_terminal_window():
    assert terminal_layers(32) == list(range(21, 31))
    assert terminal_layers(30) == list(range(21, 31))
    assert terminal_layers(12) == [9, 10, 11, 12]


def test_synthetic_late_shift_is_localized_in_the_terminal_window(traces):
    """Shift a in layers 3.. of a copy by far more than the noise: onset and terminal share must find it."""
    base = traces["base"]
    tab = base.table.copy()
    layers = tab["layer"].to_numpy()
    shift = np.where(layers >= 3, 0.5, 0.0)
    tab["a"] = tab["a"] + shift
    moved = Trace(tab, {**base.meta, "label": "moved"}, base.boot + shift[:, None], base.seq_L, base.spectra)
    c = compare([base, moved], CompareConfig(n_boot=200))
    s = c.pairs[0].summary
    assert s["onset_a"] == 3
    assert s["terminal_share_a"] == pytest.approx(1.0)
    assert s["delta_align"] == pytest.approx(0.5)


def test_save_load_round_trip(traces, tmp_path):
    c = compare([traces["base"], traces["other"]], CompareConfig(n_boot=100))
    c.save(tmp_path / "c")
    back = Comparison.load(tmp_path / "c")
    pd.testing.assert_frame_equal(back.pairs[0].table, c.pairs[0].table, check_dtype=False)
    assert back.pairs[0].summary["delta_align"] == pytest.approx(c.pairs[0].summary["delta_align"])
    assert "operational" in back.meta["note"]


def test_gradient_concentration_from_weights(tmp_path):
    a = save_checkpoint(tmp_path / "a", "llama", seed=0)
    b = save_checkpoint(tmp_path / "b", "llama", seed=0)
    from safetensors.torch import load_file, save_file

    w = load_file(b / "model.safetensors")
    w["model.layers.2.mlp.down_proj.weight"] += 0.5  # only block 3 moves
    save_file(w, b / "model.safetensors", metadata={"format": "pt"})
    g = block_sq_change(a, b, 3)
    n = w["model.layers.2.mlp.down_proj.weight"].numel()
    np.testing.assert_allclose(g, [0, 0, 0.25 * n], rtol=1e-6)


def _captured_pair(tmp_path, checkpoint, tensor: str, edit) -> tuple[str, str]:
    """Stores of the tiny Llama and of a copy with one tensor edited, on the same 10 prompts."""
    from safetensors.torch import load_file, save_file

    b = save_checkpoint(tmp_path / "b", "llama")
    w = load_file(b / "model.safetensors")
    w[tensor] = edit(w[tensor])
    save_file(w, b / "model.safetensors", metadata={"format": "pt"})
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Hello number {i}, how are you?"}
                                           for i in range(10)])
    sa, sb = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(p), out=sa))
    capture(CaptureConfig(model=str(b), prompts=str(p), out=sb))
    return sa, sb


def test_cross_readout_separates_readout_from_representation(tmp_path, checkpoint):
    """Same blocks, different final norm: representation unchanged (0), readout moved (= total)."""
    from spinal.analyze.compare.cross_readout import cross_readout

    sa, sb = _captured_pair(tmp_path, checkpoint, "model.norm.weight",
                            lambda t: t * 1.5 + 0.2)  # only the readout changes
    df = cross_readout(sa, sb, lens_tokens=0)
    assert (df["fr_representation"] == 0).all()
    assert (df["fr_readout"] > 1e-3).all()
    np.testing.assert_allclose(df["fr_total"], df["fr_readout"], rtol=1e-6)
    same = cross_readout(sa, sa, lens_tokens=0)
    assert (same[["fr_total", "fr_representation", "fr_readout"]].to_numpy() == 0).all()


def test_series_keeps_the_method_wording_beside_the_jump_rule(traces):
    """docs/method.md §4's wording (a reversal of the terminal gain) is computed beside the destabilization flag: a
    terminal gain that falls back is a reversal to the wording, but a step no larger than the run's first is not
    a jump (analyze/compare/stability.py)."""
    base = traces["base"]
    layers = base.table["layer"].to_numpy()

    def shifted(label, gain):
        shift = np.where(layers == layers.max(), gain, 0.0)  # terminal window of a 3-block model: layer 3
        tab = base.table.assign(a=base.table["a"] + shift)
        return Trace(tab, {**base.meta, "label": label}, base.boot + shift[:, None], base.seq_L, base.spectra)

    series = [base, shifted("s1", 0.5), shifted("s2", 0.7), shifted("s3", 0.1)]
    c = compare(series, CompareConfig(n_boot=200))
    rows = c.series.set_index("label")
    np.testing.assert_allclose(rows["terminal_a_gain"].to_numpy(), [0, 0.5, 0.7, 0.1], atol=1e-12)
    assert not rows.loc["s1", "method_rule"] and not rows.loc["s2", "method_rule"]
    assert rows.loc["s3", "method_rule"] and "terminal a gain fell 0.6" in rows.loc["s3", "method_reason"]
    assert c.meta["ramp_onset"] == "s1"
    # the a-profile steps are 0.5, 0.2, 0.6 (RMS over the 4 layers: half of each): s3 is 1.7x the median, no jump
    np.testing.assert_allclose(rows["step_a"].to_numpy()[1:], [0.25, 0.1, 0.3], atol=1e-12)
    assert not rows["destabilized"].any() and c.meta["jump_factor"] == 4.0
    jump = compare(series[:3] + [shifted("s3", 3.0)], CompareConfig(n_boot=200)).series.set_index("label")
    assert jump.loc["s3", "destabilized"] and jump.loc["s3", "step_a_ratio"] == pytest.approx(1.15 / 0.175)
    # a first step that loses ground against the reference is not a reversal
    c2 = compare([base, shifted("down", -0.5), shifted("up", 0.2)], CompareConfig(n_boot=200))
    assert not c2.series["method_rule"].any()


def test_cross_readout_with_one_lens_skips_the_third_readout_and_equals_the_full_count(tmp_path, checkpoint):
    """Blocks differ, head and norm do not (a q/v LoRA adapter): the readout change is exactly 0, the
    representation change is the total, and both equal the three-readout computation; the pair runs as one task
    per layer on a process pool with the same result."""
    from spinal.analyze.compare.cross_readout import _same_lens, cross_readout, cross_readout_layer, cross_readout_tasks

    sa, sb = _captured_pair(tmp_path, checkpoint, "model.layers.1.self_attn.v_proj.weight",
                            lambda t: t * 1.5)  # block 2 moves; the readout does not
    assert _same_lens(Store.open(sa), Store.open(sb))
    tasks = cross_readout_tasks(sa, sb, lens_tokens=0)
    assert all(kw["same_lens"] for _, kw in tasks)
    full = pd.DataFrame([cross_readout_layer(**{**kw, "same_lens": False}) for _, kw in tasks])
    short = cross_readout(sa, sb, lens_tokens=0)
    pooled = cross_readout(sa, sb, lens_tokens=0, workers=2)
    assert (short["fr_readout"] == 0).all() and (full["fr_readout"] == 0).all()  # one lens: bit-identical readouts
    assert (short["fr_total"].iloc[2:] > 1e-3).all() and (short["fr_total"].iloc[:2] == 0).all()  # after block 2
    for col in ("fr_total", "fr_representation", "fr_readout"):
        np.testing.assert_allclose(short[col], full[col], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(pooled[col], short[col])


def test_cli_compare_reads_the_series_out_and_refuses_a_jump_factor_of_one(traces, tmp_path):
    other = traces["other"]
    traces["base"].save(tmp_path / "base")
    other.save(tmp_path / "other")
    again = Trace(other.table, {**other.meta, "label": "other-again"}, other.boot, other.seq_L, other.spectra)
    again.save(tmp_path / "again")
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "other"), str(tmp_path / "again"),
            "-o", str(tmp_path / "c"), "--n-boot", "50"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "series: other not judged (first step)" in r.output
    assert "series: other-again not flagged (largest step 0.0× the typical healthy step)" in r.output  # no step
    bad = CliRunner().invoke(app, args + ["--jump-factor", "1", "--overwrite"])
    assert bad.exit_code == 2 and "jump_factor=1.0: a jump must be larger than the typical step" in bad.output
    assert (tmp_path / "c" / "compare.json").exists()  # the earlier comparison is still there


def test_an_older_comparison_shows_its_flag_as_the_method_wording(traces, tmp_path):
    """A compare.json written before the jump rule: its flag was METHOD §4's wording, so it is read back as that,
    and the jump rule says it was not computed instead of inheriting the old flag."""
    import json

    base, other = traces["base"], traces["other"]
    again = Trace(other.table, {**other.meta, "label": "again"}, other.boot, other.seq_L, other.spectra)
    compare([base, other, again], CompareConfig(n_boot=50)).save(tmp_path / "c")
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    doc["series"] = [{k: r[k] for k in ("label", "terminal_a_gain", "terminal_L_change", "coherence")}
                     | {"destabilized": i == 2, "reason": "terminal L rose 0.02 above its lowest" if i == 2 else ""}
                     for i, r in enumerate(doc["series"])]
    (tmp_path / "c" / "compare.json").write_text(json.dumps(doc))
    from spinal.outputs import MARKER, file_sha256

    marker = json.loads((tmp_path / "c" / MARKER).read_text())  # as that older SPINAL wrote it: digests match
    marker["files"]["compare.json"] = file_sha256(tmp_path / "c" / "compare.json")
    (tmp_path / "c" / MARKER).write_text(json.dumps(marker))
    back = Comparison.load(tmp_path / "c").series.set_index("label")
    assert not back["destabilized"].any() and back.loc["again", "method_rule"]
    assert back.loc["again", "method_reason"] == "terminal L rose 0.02 above its lowest"
    assert back.loc["again", "reason"].startswith("not computed: this comparison predates the jump rule")


def test_traces_read_on_different_lens_sizes_are_compared_with_a_warning_and_both_sizes_recorded(traces, caplog):
    """Nested lens subsamples of one seeded order stay paired by sequence: compare goes on, says so, records both."""
    base = traces["base"]
    other = Trace(traces["other"].table, {**traces["other"].meta, "lens_tokens": base.meta["lens_tokens"] + 7},
                  traces["other"].boot, traces["other"].seq_L, traces["other"].spectra)
    with caplog.at_level("WARNING"):
        c = compare([base, other], CompareConfig(n_boot=50))
    assert "different numbers of lens tokens" in caplog.text
    assert c.meta["lens_tokens"] == [base.meta["lens_tokens"], base.meta["lens_tokens"] + 7]
    caplog.clear()
    with caplog.at_level("WARNING"):
        compare([base, traces["other"]], CompareConfig(n_boot=50))
    assert "lens tokens" not in caplog.text
