"""The report's verdict: each sentence follows from the numbers it is given (where, how strongly, signatures, fits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinal.analyze.compare.paired import compare
from spinal.analyze.compare.comparison import Comparison, PairComparison
from spinal.analyze.trace_format import Trace
from spinal.analyze.report.verdict import onset_text, pair_verdict, verdicts
from spinal.config import CompareConfig

N = 13  # layers 0…12; terminal window 9–12
LAYERS = np.arange(N)
TERM = LAYERS >= 9


def _trace(label: str, status: str = "ok", entropy_last: float = 1.0, path_length: float = 8.0) -> Trace:
    table = pd.DataFrame({"layer": LAYERS, "a": 0.8 + 0.02 * LAYERS, "status": [status] * N,
                          "L_mean": np.append(np.full(N - 1, 0.5), np.nan),
                          "entropy": np.linspace(4.0, entropy_last, N)})
    return Trace(table, {"label": label, "path_length": path_length}, np.zeros((N, 0)), np.zeros((0, N - 1)), {})


def _pair(d_a: np.ndarray, d_L: np.ndarray | None = None, null: float = 0.01, other: str = "dpo") -> PairComparison:
    d_L = np.zeros(N) if d_L is None else d_L
    d_L = d_L.astype(float).copy()
    d_L[-1] = np.nan  # the last layer has no step
    p = lambda d: np.where(np.abs(d) > 3 * null, 1e-6, 0.8)  # noqa: E731  (significant where clearly large)
    table = pd.DataFrame({
        "layer": LAYERS, "d_a": d_a, "d_a_lo": d_a - null, "d_a_hi": d_a + null, "p_a_holm": p(d_a), "null_a": null,
        "d_L": d_L, "d_L_lo": d_L - null, "d_L_hi": d_L + null, "p_L_holm": p(d_L), "null_L": null, "terminal": TERM,
    })
    share = float(np.abs(d_a)[TERM].sum() / np.abs(d_a).sum()) if np.abs(d_a).sum() else float("nan")
    return PairComparison("sft", other, table, {"terminal_share_a": share, "onset_a": None, "onset_L": None})


def _text(v) -> str:
    return " ".join([v.headline, *(s for _, s in v.points), v.caveat or ""])


def test_a_change_in_the_terminal_window_only_reads_as_a_late_ramp():
    d_a = np.where(TERM, 0.05, 0.0)
    v = pair_verdict(_pair(d_a), _trace("sft"), _trace("dpo"), None)
    assert v.headline.startswith("a late-layer α ramp") and "terminal Δa +0.050" in v.headline
    where = dict(v.points)["where"]
    assert "concentrates late" in where and "100% of |Δa|" in where and "(31% if uniform)" in where
    assert "at layers 9–12" in where
    assert "late-layer α ramp: yes" in dict(v.points)["signatures"]
    assert "5.0× the noise" in dict(v.points)["strength"]  # 0.05 over a null spread of 0.01
    assert v.caveat is None and not v.flagged  # every fit ok, no series


def test_a_change_at_every_depth_is_not_a_late_ramp():
    d_a = np.full(N, 0.4)
    v = pair_verdict(_pair(d_a), _trace("sft"), _trace("dpo"), None)
    assert v.headline.startswith("changes throughout depth")
    assert "at 13 of 13 layers beyond the noise, not only late" in dict(v.points)["where"]
    assert "late-layer α ramp: no (a moves at every depth, not only late)" in dict(v.points)["signatures"]


def test_no_change_beyond_the_noise_says_so():
    d_a = np.where(LAYERS == 4, 0.005, 0.0)  # below the null spread: does not count
    v = pair_verdict(_pair(d_a), _trace("sft"), _trace("dpo"), None)
    assert v.headline.startswith("no change in a beyond the noise")
    assert "at no layer (largest |Δa| 0.005 at layer 4)" in dict(v.points)["where"]
    assert "late-layer α ramp: no" in dict(v.points)["signatures"]


def test_one_counted_layer_in_a_window_that_moved_less_than_its_noise_is_no_ramp():
    """SmolLM2's over-trained adapter: layers 29–30 count, but the window's mean Δa (+0.001) is 0.1× its noise."""
    d_a = np.zeros(N)
    d_a[12] = 0.05
    d_a[9:12] = -0.0125  # the window's mean: +0.0031, below the null spread of 0.01
    v = pair_verdict(_pair(d_a), _trace("sft"), _trace("dpo"), None)
    assert "late-layer α ramp: no (terminal mean Δa +0.003 is within the noise ±0.010)" in dict(v.points)["signatures"]
    assert v.headline.startswith("no late-layer α ramp")
    assert v.caveat is None  # every fit ok


def test_the_paper_l_signature_reads_the_sign_of_terminal_delta_l():
    d_a = np.where(TERM, 0.05, 0.0)
    # the steps arriving in the window 9–12 are 8→9 … 11→12, stored on rows 8–11
    up = pair_verdict(_pair(d_a, np.where(LAYERS >= 8, 0.06, 0.0)), _trace("sft"), _trace("dpo"), None)
    down = pair_verdict(_pair(d_a, np.where(LAYERS >= 8, -0.06, 0.0)), _trace("sft"), _trace("dpo"), None)
    assert "smaller L in the terminal window: no (terminal ΔL +0.060: adjacent readouts move more)" in _text(up)
    assert "smaller L in the terminal window: yes" in _text(down)


def test_the_fit_caveat_names_the_layers_the_headline_rests_on():
    d_a = np.where(TERM, 0.05, 0.0)
    ref = _trace("sft")
    ref.table.loc[ref.table["layer"] == 11, "status"] = "poor-fit"
    other = _trace("dpo")
    other.table.loc[other.table["layer"] == 12, "status"] = "curved"
    other.table.loc[other.table["layer"] == 3, "status"] = "poor-fit"  # not a layer the ramp rests on
    v = pair_verdict(_pair(d_a), ref, other, None)
    assert v.caveat is not None and "2 of the 4 layers this rests on (layers 11–12)" in v.caveat
    assert "curved or poor-fit" in v.caveat and "not one exponent" in v.caveat
    every = pair_verdict(_pair(d_a), _trace("sft", "poor-fit"), _trace("dpo"), None)
    assert every.caveat.startswith("all the layers this rests on (layers 9–12) fit poor-fit")
    nothing = pair_verdict(_pair(np.zeros(N)), _trace("sft", "poor-fit"), _trace("dpo"), None)
    assert nothing.caveat is None  # no change counts: there is no headline for a fit to undermine


def test_the_series_flag_and_the_output_numbers_are_carried():
    why = "a profile step 0.5 is 20.0x the run's typical healthy step 0.025 (threshold 4x)"
    row = {"label": "dpo", "destabilized": True, "reason": why, "method_rule": False, "method_reason": ""}
    v = pair_verdict(_pair(np.where(TERM, 0.05, 0.0)), _trace("sft"), _trace("dpo", entropy_last=2.5,
                                                                              path_length=6.0), row)
    assert v.flagged and v.headline.endswith("flagged destabilized")
    assert dict(v.points)["stability"] == f"flagged destabilized: {why}"
    calm = {"label": "dpo", "destabilized": False, "reason": "", "step_a_ratio": 0.4, "step_L_ratio": 1.3,
            "step_path_ratio": float("nan"), "method_rule": True, "method_reason": "terminal L rose 0.02 above its lowest"}
    quiet = pair_verdict(_pair(np.where(TERM, 0.05, 0.0)), _trace("sft"), _trace("dpo"), calm)
    assert not quiet.flagged and dict(quiet.points)["stability"] == (
        "not flagged: its step from the checkpoint before is at most 1.3x the run's typical healthy step "
        "(METHOD §4's wording would flag it: terminal L rose 0.02 above its lowest)")
    first = {**calm, "reason": "first step: no earlier step to compare with", "method_rule": False}
    early = pair_verdict(_pair(np.where(TERM, 0.05, 0.0)), _trace("sft"), _trace("dpo"), first)
    assert dict(early.points)["stability"] == "not judged (first step: no earlier step to compare with)"
    assert dict(v.more)["output"] == "final-layer entropy 2.50 nats (sft: 1.00); path length Σ L 6.00 (sft: 8.00)"


def test_onsets_never_read_as_a_bare_zero():
    assert onset_text(0, "a") == "layer 0" and onset_text(0, "L") == "step 0→1"
    assert onset_text(None, "a") == "none" and onset_text(float("nan"), "L") == "none"


def test_verdicts_from_a_real_comparison(tmp_path):
    """compare()'s own output: a checkpoint whose a rises only in the last layers reads as a late ramp; the
    reference compared with a copy of itself moves nowhere."""
    rng = np.random.default_rng(0)

    def trace(label: str, bump: float) -> Trace:
        a = 0.8 + 0.3 * LAYERS / 12 + bump * TERM
        L = np.append(0.9 - 0.03 * LAYERS[:-1], np.nan)
        table = pd.DataFrame({"layer": LAYERS, "a": a, "a_lo": a - 0.01, "a_hi": a + 0.01, "status": "ok",
                              "null_sd_a": 0.004, "L_mean": L, "entropy": np.linspace(4, 1, N)})
        boot = a[:, None] + 0.004 * rng.standard_normal((N, 60))
        seq_L = L[None, :-1] + 0.01 * rng.standard_normal((256, N - 1))
        meta = {"label": label, "tokens_sha256": "x", "path_length": float(np.nansum(L)),
                "blocks_used": 16, "options": {"n_boot": 60, "blocks": 16, "seed": 0}}
        return Trace(table, meta, boot, seq_L, {})

    base = trace("base", 0.0)
    same = Trace(base.table, {**base.meta, "label": "copy"}, base.boot, base.seq_L, {})
    traces = [base, trace("dpo", 0.1), same]
    comp = compare(traces, CompareConfig(n_boot=60, null_splits=4))
    assert isinstance(comp, Comparison)
    v = {x.title: x for x in verdicts(traces, comp)}
    assert v["dpo vs base"].headline.startswith("a late-layer α ramp")
    assert v["copy vs base"].headline.startswith("no change in a beyond the noise")
    assert "at no layer" in dict(v["copy vs base"].points)["where"]


def test_a_trace_alone_gets_a_verdict_too():
    tr = _trace("sft")
    tr.table.loc[tr.table["layer"] == 5, "status"] = "curved"
    (v,) = verdicts([tr], None)
    assert v.headline == "12 of 13 layers fit one power law"
    assert v.caveat.startswith("1 of 13 layers")
    assert "a ranges from 0.800 (layer 0) to 1.040 (layer 12)" in dict(v.points)["contraction"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
