"""Where in the sequence: positions within a reply, the per-position profile and its coverage, and the final-layer
KL / shifted tokens against Hugging Face's own logits in float64."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_jsonl
from spinal.analyze.compare.positions import bin_labels, early_share, final_shift, position_bins, profile, relative_positions
from spinal.capture import capture
from spinal.config import CaptureConfig
from spinal.store.contract import Store


def test_positions_count_from_each_sequences_first_stored_token():
    seq = np.array([0, 0, 0, 1, 1, -1, 2])
    pos = np.array([17, 18, 19, 5, 6, 0, 40])  # absolute positions in the prompt + reply
    assert relative_positions(seq, pos).tolist() == [0, 1, 2, 0, 1, -1, 0]
    assert position_bins(np.array([0, 3, 4, 5, 6, 200, -1])).tolist() == [0, 3, 4, 4, 5, 14, -1]
    assert bin_labels()[:6] == ["0", "1", "2", "3", "4–5", "6–7"] and bin_labels()[-1] == "128+"


def _stream(rng, n_seq: int, length: int):
    seq = np.repeat(np.arange(n_seq), length)
    rel = np.tile(np.arange(length), n_seq)
    return seq, rel, position_bins(rel)


def test_the_profile_puts_each_shift_at_its_position():
    seq, rel, bins = _stream(np.random.default_rng(0), 40, 20)
    shifted = rel < 4  # every sequence shifts its first four reply tokens, never later
    kl = np.where(shifted, 2.0, 0.1)
    prof = profile(kl, shifted, bins, seq, n_boot=100).set_index("bin")
    assert prof.loc[["0", "1", "2", "3"], "shifted"].tolist() == [1.0] * 4
    assert prof.loc[["4–5", "16–23"], "shifted"].tolist() == [0.0, 0.0]
    assert prof.loc["all", "shifted"] == pytest.approx(4 / 20) and prof.loc["all", "kl"] == pytest.approx(
        (4 * 2.0 + 16 * 0.1) / 20)
    assert prof.loc["0", "tokens"] == 40 and prof.loc["all", "tokens"] == 800 and prof.loc["all", "sequences"] == 40
    assert np.isnan(prof.loc["32–47", "shifted"]) and prof.loc["32–47", "tokens"] == 0  # nobody is that long
    assert early_share(prof.reset_index()) == 1.0


def test_the_shifted_share_interval_covers_at_its_nominal_rate():
    """200 seeded streams of 60 sequences whose shift rate varies by sequence (as replies do): the 95 % interval of
    the overall share covers the rate the streams were drawn with in 90–98 % of them."""
    covered = 0
    for i in range(200):
        rng = np.random.default_rng(1000 + i)
        lengths = rng.integers(5, 40, size=60)
        seq = np.repeat(np.arange(60), lengths)
        rel = np.concatenate([np.arange(k) for k in lengths])
        rate = rng.beta(0.7, 9.3, size=60)[seq]  # mean 0.07, overdispersed across sequences
        shifted = rng.random(seq.size) < rate
        prof = profile(np.zeros(seq.size), shifted, position_bins(rel), seq, n_boot=300, seed=i)
        row = prof[prof["bin"] == "all"].iloc[0]
        # the population share: E[Σ shifted] / E[Σ tokens] with lengths as drawn (uniform 5–39) and rate mean 0.07
        covered += row["shifted_lo"] <= 0.07 <= row["shifted_hi"]
    assert 0.90 <= covered / 200 <= 0.98, covered


@pytest.fixture(scope="module")
def pair(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("positions")
    p = write_jsonl(d / "p.jsonl", [{"id": f"q{i}", "prompt": f"Tell me about item {i} and why it matters."}
                                    for i in range(6)])
    sa, sb = str(d / "a.zarr"), str(d / "b.zarr")
    capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(p), out=sa))
    capture(CaptureConfig(model=str(checkpoint("llama", seed=1)), prompts=str(p), out=sb))
    return sa, sb, checkpoint("llama"), checkpoint("llama", seed=1)


def test_final_shift_equals_float64_kl_and_top3_from_the_models_own_logits(pair):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sa, sb, ca, cb = pair
    s = Store.open(sa)
    tok = s.tokens()
    rows = np.flatnonzero(tok["sequence"] >= 0)
    got = final_shift(sa, sb, rows, top_k=3)
    ma = AutoModelForCausalLM.from_pretrained(str(ca), dtype=torch.float64).eval()
    mb = AutoModelForCausalLM.from_pretrained(str(cb), dtype=torch.float64).eval()
    want_kl, want_shift = np.empty(rows.size), np.empty(rows.size, dtype=bool)
    bos = AutoTokenizer.from_pretrained(str(ca)).bos_token_id
    for q in np.unique(tok["sequence"][rows]):
        r = np.flatnonzero(tok["sequence"] == q)
        assert (tok["position"][r] == np.arange(1, r.size + 1)).all()  # every position after BOS is stored
        ids = torch.from_numpy(np.concatenate([[bos], tok["ids"][r]]).astype(np.int64))[None]
        with torch.no_grad():
            la = torch.log_softmax(ma(ids).logits[0, 1:], -1)
            lb = torch.log_softmax(mb(ids).logits[0, 1:], -1)
        k = np.searchsorted(rows, r)
        want_kl[k] = (lb.exp() * (lb - la)).sum(-1).numpy()
        want_shift[k] = ~(la.topk(3, -1).indices == lb.argmax(-1, keepdim=True)).any(-1).numpy()
    np.testing.assert_allclose(got["kl"], want_kl, rtol=2e-4, atol=1e-6)
    assert want_kl.max() > 0.01  # the two random models do differ
    assert (got["shifted"] == want_shift).mean() >= 0.99  # a float32 tie at the top-3 boundary may flip one
    assert want_shift.any() and not want_shift.all()
    same = final_shift(sa, sa, rows)
    assert (same["kl"] == 0).all() and not same["shifted"].any()


def test_compare_with_stores_adds_the_profile_and_the_depth_position_map(pair, tmp_path):
    """Through the pipeline `spinal compare --stores` runs: the summary carries the shifted share with its interval,
    the folder keeps both tables and loads them back; a checkpoint against itself shifts nothing."""
    from spinal.analyze.compare.comparison import Comparison
    from spinal.analyze.compare.pipeline import comparison
    from spinal.analyze.trace import analyze
    from spinal.config import AnalyzeConfig, CompareConfig

    sa, sb, _, _ = pair
    ta = analyze(AnalyzeConfig(store=sa, out=str(tmp_path / "ta"), n_boot=20, null_splits=2, workers=1), label="a")
    tb = analyze(AnalyzeConfig(store=sb, out=str(tmp_path / "tb"), n_boot=20, null_splits=2, workers=1), label="b")
    tc = analyze(AnalyzeConfig(store=sa, out=str(tmp_path / "tc"), n_boot=20, null_splits=2, workers=1), label="c")
    c = comparison([ta, tb, tc], CompareConfig(n_boot=50, null_splits=2), stores=[sa, sb, sa], workers=1)
    by = {p.other: p.summary for p in c.pairs}
    assert 0 < by["b"]["shifted_share"] < 1 and by["b"]["shifted_share_lo"] <= by["b"]["shifted_share"] \
        <= by["b"]["shifted_share_hi"]
    assert by["c"]["shifted_share"] == 0 and by["c"]["kl_final_mean"] == 0
    n_tokens = int((Store.open(sa).tokens()["sequence"] >= 0).sum())
    assert c.positions.query("other == 'b' and bin == 'all'")["tokens"].item() == n_tokens
    assert set(c.depth_position["other"]) == {"b", "c"} and (c.depth_position.query("other == 'c'")["fr_total"] == 0).all()
    back = Comparison.load(c.save(tmp_path / "cmp"))
    assert back.positions.equals(c.positions) and back.depth_position.equals(c.depth_position)
    assert {p.other: p.summary["shifted_share"] for p in back.pairs} == {"b": by["b"]["shifted_share"], "c": 0.0}


def test_the_comparisons_lens_tasks_run_on_the_backend_given_and_equal_the_local_pools(pair, tmp_path):
    """`spinal run` hands the comparison its backend's task map (Ray on a cluster), as it does the analysis: every
    cross-readout (pair, layer) task, every positions (pair) task and every CKA (layer) task goes through it, and the comparison equals
    the one the local pool makes."""
    from spinal.analyze.compare.pipeline import comparison
    from spinal.analyze.pool import call
    from spinal.analyze.trace import analyze
    from spinal.config import AnalyzeConfig, CompareConfig

    sa, sb, _, _ = pair
    ta = analyze(AnalyzeConfig(store=sa, out=str(tmp_path / "ta"), n_boot=20, null_splits=2, workers=1), label="a")
    tb = analyze(AnalyzeConfig(store=sb, out=str(tmp_path / "tb"), n_boot=20, null_splits=2, workers=1), label="b")
    seen: list[str] = []

    def submit(tasks, workers, progress):
        seen.extend(fn.__name__ for fn, _ in tasks)
        return [call(t) for t in tasks]

    cfg = CompareConfig(n_boot=50, null_splits=2)
    remote = comparison([ta, tb], cfg, stores=[sa, sb], workers=1, submit=submit)
    local = comparison([ta, tb], cfg, stores=[sa, sb], workers=1)
    layers = len(Store.open(sa).layers)
    assert seen.count("cross_readout_layer") == layers and seen.count("final_shift") == 1
    assert seen.count("cka_layer") == layers and len(seen) == 2 * layers + 1  # CKA: one task per layer, all pairs
    assert remote.pairs[0].table.equals(local.pairs[0].table) and remote.positions.equals(local.positions)
    assert repr(remote.pairs[0].summary) == repr(local.pairs[0].summary)  # repr: nan == nan
