"""The destabilization signal (analyze/compare/stability.py): a step of the run far beyond its own healthy steps is flagged,
nothing before it is, noise is not a jump; and on the known answers (the shipped steps of the dense series and of
the reference family) the first flag falls where the ground truth breaks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinal.analyze.compare.stability import FACTOR, Step, flag_text, judge, step
from spinal.analyze.trace_format import Trace

ROOT = Path(__file__).resolve().parents[2]
N_LAYERS, N_SEQ, N_BOOT, BLOCKS = 13, 200, 400, 16


def _trace(label: str, a: np.ndarray, L: np.ndarray, rng: np.random.Generator, boot_common: np.ndarray,
           seq_common: np.ndarray, noise: float, blocks: int = BLOCKS) -> Trace:
    """A trace with profile ``a`` (layer) and ``L`` (step); replicates and sequences share the run's common
    fluctuations (the same blocks and sequences in every checkpoint) plus ``noise`` of their own."""
    boot = a[:, None] + boot_common + noise * rng.standard_normal((N_LAYERS, N_BOOT))
    seq_L = L[None, :] + seq_common + noise * rng.standard_normal((N_SEQ, N_LAYERS - 1))
    table = pd.DataFrame({"layer": np.arange(N_LAYERS), "a": a, "L_mean": np.append(seq_L.mean(axis=0), np.nan)})
    return Trace(table, {"label": label, "blocks_used": blocks}, boot, seq_L, {})


def _walk(sizes: list[float], noise: float = 1e-4, seed: int = 0, blocks: int = BLOCKS) -> list[Trace]:
    """A run that moves its a and L profiles by RMS ``sizes[i]`` at save i, in a random direction each time."""
    rng = np.random.default_rng(seed)
    a, L = np.linspace(1.1, 0.6, N_LAYERS), np.full(N_LAYERS - 1, 0.5)
    boot_common = 0.01 * rng.standard_normal((N_LAYERS, N_BOOT))
    seq_common = 0.05 * rng.standard_normal((N_SEQ, N_LAYERS - 1))
    out = [_trace("ref", a, L, rng, boot_common, seq_common, noise, blocks)]
    for i, s in enumerate(sizes, 1):
        da, dL = rng.standard_normal(N_LAYERS), rng.standard_normal(N_LAYERS - 1) + 1.0  # L drifts one way
        a = a + s * da / np.sqrt(np.mean(da ** 2))
        L = L + s * dL / np.sqrt(np.mean(dL ** 2))
        out.append(_trace(f"s{i}", a, L, rng, boot_common, seq_common, noise, blocks))
    return out


def _flags(traces: list[Trace], factor: float = FACTOR) -> list[bool]:
    return [r["destabilized"] for r in judge([step(p, c) for p, c in zip(traces[:-1], traces[1:])], factor)]


def test_the_step_sizes_are_the_profiles_own_differences():
    t = _walk([0.02, 0.01])
    s = step(t[1], t[2])
    d_a = t[2].table["a"].to_numpy() - t[1].table["a"].to_numpy()
    L1, L2 = (x.table["L_mean"].to_numpy()[:-1] for x in t[1:])
    assert s.size["a"] == pytest.approx(math.sqrt(float(np.mean(d_a ** 2))), rel=1e-12)
    assert s.size["a"] == pytest.approx(0.01, rel=1e-9)  # the walk's own step
    assert s.size["L"] == pytest.approx(math.sqrt(float(np.mean((L2 - L1) ** 2))), rel=1e-12)
    assert s.size["path"] == pytest.approx(abs(L2.sum() - L1.sum()), rel=1e-12)
    same = step(t[1], t[1])
    assert same.size == {"a": 0.0, "L": 0.0, "path": 0.0} and same.noise == {"a": 0.0, "L": 0.0, "path": 0.0}


def test_the_step_noise_is_the_standard_error_of_the_paired_difference():
    """Own noise σ per replicate and per sequence value: a replicate difference has SD σ√2 (× √(g/(g−1)) for the
    block bootstrap), a per-step mean over n sequences SE σ√2/√n, a path-length difference SE σ√(2·steps/n)."""
    sigma, g = 0.003, 4  # few blocks: the √(g/(g−1)) = 1.15 factor is far outside the tolerance
    t = _walk([0.02], noise=sigma, seed=3, blocks=g)
    s = step(t[0], t[1])
    assert s.noise["a"] == pytest.approx(sigma * math.sqrt(2) * math.sqrt(g / (g - 1)), rel=0.05)
    assert s.noise["L"] == pytest.approx(sigma * math.sqrt(2 / N_SEQ), rel=0.08)
    assert s.noise["path"] == pytest.approx(sigma * math.sqrt(2 * (N_LAYERS - 1) / N_SEQ), rel=0.15)


def test_a_run_that_settles_is_never_flagged():
    assert not any(_flags(_walk([0.02, 0.012, 0.006, 0.004, 0.003, 0.003, 0.0025, 0.002])))


def test_the_first_jump_is_flagged_and_no_step_before_it():
    healthy = [0.02, 0.01, 0.004, 0.003, 0.003]  # median of the healthy steps: 0.004
    flags = _flags(_walk(healthy + [0.06, 0.02, 0.03]))
    assert flags == [False] * 5 + [True, True, True]  # the steps after it are still 5-7x the healthy ones
    # flagged steps do not become the run's history: with the jump in it, the median would be 0.007 and the
    # next step of 0.02 (2.9x) would look ordinary; against the healthy steps it is 5x
    sizes = healthy + [0.06, 0.02]
    rows = judge([Step({c: x for c in ("a", "L", "path")}, {c: 0.0 for c in ("a", "L", "path")}) for x in sizes])
    assert [r["destabilized"] for r in rows] == [False] * 5 + [True, True]
    assert rows[-1]["step_a_ratio"] == pytest.approx(0.02 / 0.004)


def test_the_threshold_is_the_ratio_to_the_median_healthy_step():
    steps = [Step({"a": s, "L": s, "path": s}, {"a": 0.0, "L": 0.0, "path": 0.0}) for s in (0.5, 0.1, 0.2, 0.8)]
    rows = judge(steps, factor=4.0)
    assert [r["step_a_ratio"] for r in rows[1:]] == pytest.approx([0.1 / 0.5, 0.2 / 0.3, 0.8 / 0.2])
    assert not any(r["destabilized"] for r in rows)  # 0.8 is exactly 4x the median, not more
    over = judge(steps[:3] + [Step({"a": 0.81, "L": 0.0, "path": 0.0}, steps[0].noise)], factor=4.0)[-1]
    assert over["destabilized"] and over["reason"].startswith("a profile step 0.81 is 4.0x")
    assert "L profile" not in over["reason"]  # one component is enough, and only it is named
    assert rows[0]["reason"] == "first step: no earlier step to compare with"


def test_noise_is_not_a_jump():
    """A stalled run (steps at its noise level): a 10x larger step at 2.9 standard errors is not flagged, the same
    step at 3.1 standard errors is; with no standard error at all the ratio decides, and the reason says so."""
    def last(se: float) -> dict:
        steps = [Step({c: x for c in ("a", "L", "path")}, {c: se for c in ("a", "L", "path")})
                 for x in (2e-4, 1e-4, 1e-4, 1e-3)]
        return judge(steps)[-1]
    assert not last(1e-3 / 2.9)["destabilized"]
    assert last(1e-3 / 3.1)["destabilized"]
    blind = last(float("nan"))
    assert blind["destabilized"] and "no standard error, the ratio alone decides" in blind["reason"]


def test_the_short_reading_names_only_the_components_that_flagged():
    rows = judge([Step({"a": x, "L": y, "path": 0.1}, {"a": 0.0, "L": 1.0, "path": 0.0})
                  for x, y in ((0.1, 0.1), (0.1, 0.1), (1.0, 1.0))])
    assert rows[-1]["step_L_ratio"] == pytest.approx(10.0)  # over the factor, but inside its noise
    assert flag_text(rows[-1]) == "yes: a 10.0× the typical healthy step"
    assert flag_text({**rows[-1], "reason": float("nan"), "destabilized": False}) == "no"  # read back from csv
    assert flag_text(rows[0]) == "– (first step)"


def _known(name: str) -> tuple[list[str], list[Step], dict]:
    doc = json.loads((ROOT / "reference" / "validation" / f"{name}.json").read_text())
    steps = [Step(s["size"], s["noise"]) for s in doc["steps"]]
    return doc["labels"], steps, doc


def test_the_dense_series_is_flagged_first_at_its_break_and_never_before():
    """reference/validation/series.json: the steps of `spinal run configs/series.toml` (written by
    `python -m reference.validation`). The ground truth breaks at step 175 (the first save after β is cut): its
    held-out text NLL jumps 5.97 → 7.59 nats (reference/series/EVAL.md)."""
    labels, steps, doc = _known("series")
    assert labels[0] == "sft" and labels[1:] == [f"series-step{s:04d}" for s in range(25, 301, 25)]
    flagged = [lab for lab, r in zip(labels[1:], judge(steps, doc["factor"])) if r["destabilized"]]
    assert flagged[0] == "series-step0175" == doc["ground_truth_break"]
    assert flagged == labels[7:]  # every step after the break moves faster than the healthy run did


def test_the_family_flags_the_over_trained_run_only():
    labels, steps, doc = _known("family")
    assert labels == ["sft", "dpo-step0025", "dpo-step0075", "dpo-step0200", "dpo-overtrained"]
    assert [r["destabilized"] for r in judge(steps, doc["factor"])] == [False, False, False, True]


def test_the_real_model_flags_its_over_trained_adapter_only():
    """SmolLM2-135M-Instruct with LoRA-DPO adapters (configs/smollm2-dpo.toml): the over-trained adapter is
    degenerate (base-reply NLL 1.06 → 2.01, reference/smollm2/EVAL.md), the three healthy steps are not."""
    labels, steps, doc = _known("smollm2")
    assert labels == ["base", "dpo-step0008", "dpo-step0014", "dpo-step0020", "dpo-overtrained"]
    assert [r["destabilized"] for r in judge(steps, doc["factor"])] == [False, False, False, True]
    assert doc["ground_truth_break"] == "dpo-overtrained"


def test_the_known_answers_were_judged_with_the_default_factor():
    from spinal.config import CompareConfig

    assert CompareConfig().jump_factor == FACTOR  # the CLI/TOML default is the validated one
    for name in ("series", "family", "smollm2"):
        assert _known(name)[2]["factor"] == FACTOR


@pytest.mark.slow
def test_a_regenerated_series_audit_reproduces_the_shipped_known_answer():
    """The full series, end to end: after `python -m reference.series --out out/series` (~13 min) and
    `spinal run configs/series.toml` (~4 min), the steps recomputed from the audit's traces give the shipped
    flags. Needs that audit on disk; CI does not regenerate it (17 min), so there this test says so and skips."""
    audit = ROOT / "out" / "series" / "audit"
    if not (audit / "compare" / "compare.json").exists():
        pytest.skip(f"no regenerated series audit at {audit}: run `python -m reference.series --out out/series` "
                    "and `spinal run configs/series.toml --overwrite` to check it")
    from reference.validation import HERE, collect

    own_truth = audit.parent / "eval.json"  # the regenerated run's own ground truth, beside its checkpoints
    fresh = collect("series", audit, own_truth if own_truth.exists() else HERE / "series" / "eval.json")
    _, _, shipped = _known("series")
    assert fresh["labels"] == shipped["labels"] and fresh["ground_truth_break"] == "series-step0175"
    # two regenerations agree to 1e-4 nats through step 225 and drift apart later (reference/series.py): compare the
    # healthy phase and the break, and the first flag
    upto = shipped["labels"].index("series-step0175")  # steps 1…upto arrive at step 25…175
    assert [r["destabilized"] for r in fresh["judged"][:upto]] == [False] * (upto - 1) + [True]
    for new, old in zip(fresh["steps"][:upto], shipped["steps"][:upto]):
        for c in ("a", "L", "path"):
            assert new["size"][c] == pytest.approx(old["size"][c], rel=0.05, abs=1e-4)
