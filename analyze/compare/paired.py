"""Paired statistics per layer against the reference: bootstrap Δ, CI, Holm-adjusted p, null spread, onset, localization."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from spinal.analyze import seeds
from spinal.analyze.compare.aggregates import pair_aggregates, steps_into, terminal_layers
from spinal.analyze.compare.comparison import Comparison, PairComparison
from spinal.analyze.compare.pairing import (TOKEN_ONLY, check_prompt_design, distinct_labels, mixed_options,
                                            pairing_of, token_count_note)
from spinal.analyze.contraction.intervals import replicate_se, t_interval
from spinal.analyze.contraction.ranks import NAMES as RANKS
from spinal.analyze.compare.stability import training_series
from spinal.analyze.trace_format import Trace
from spinal.config import CompareConfig
from spinal.errors import InputError

LEVEL = 0.95  # two-sided CI level and family-wise α = 0.05 for Holm
log = logging.getLogger(__name__)


def check_comparable(traces: list[Trace], cfg: CompareConfig = CompareConfig()) -> tuple[list[str], list[dict]]:
    """Each trace's pairing with the reference (analyze/compare/pairing.py), the same layers and bootstrap design,
    and the options it may mix only with ``cfg.allow_mixed``; else one clear refusal. Returns (pairings, mixes)."""
    ref = traces[0]
    mixes = mixed_options(traces, cfg.allow_mixed)  # first: a different positions rule also differs in tokens
    pairings = []
    for t in traces[1:]:
        pairings.append(pairing_of(ref, t, cfg.pairing))
        if pairings[-1] == "prompt":
            check_prompt_design(ref, t)
        if list(t.table["layer"]) != list(ref.table["layer"]):
            raise InputError(f"{t.label} has layers {list(t.table['layer'])}, {ref.label} has {list(ref.table['layer'])}")
        if t.meta.get("trace_format") != ref.meta.get("trace_format"):
            raise InputError(f"{t.label} has trace format {t.meta.get('trace_format')}, {ref.label} "
                             f"{ref.meta.get('trace_format')}: their bootstrap replicates are not paired the same way; "
                             "re-analyze both with this SPINAL")
        for k in ("seed", "blocks", "n_boot", "calibration_sims", "window"):
            if t.meta["options"].get(k) != ref.meta["options"].get(k):
                raise InputError(
                    f"{t.label} was analyzed with {k}={t.meta['options'].get(k)}, {ref.label} with "
                    f"{ref.meta['options'].get(k)}; paired statistics need the same analysis options"
                )
        if t.meta.get("architecture") != ref.meta.get("architecture"):
            raise InputError(f"{t.label} is a {t.meta.get('architecture')}, {ref.label} a {ref.meta.get('architecture')}: "
                             "not checkpoints of one model")
    return pairings, mixes


def compare(traces: list[Trace], cfg: CompareConfig = CompareConfig(), *, grad: list[np.ndarray | None] | None = None,
            weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Comparison:
    """Compare each trace with the first (the reference); with ≥ 3 traces also a training-series summary.

    ``cfg``: seed, n_boot and null_splits (the rest of CompareConfig is the pipeline's, analyze/compare/pipeline.py).
    ``grad[i]``: per-block ‖θ_i − θ_ref‖² (block 1…n) when the checkpoints' weights are at hand.
    """
    seed, n_boot, null_splits = cfg.seed, cfg.n_boot, cfg.null_splits
    if len(traces) < 2:
        raise InputError("compare needs at least two traces: a reference and a checkpoint to compare with it")
    traces = distinct_labels(traces)
    pairings, mixes = check_comparable(traces, cfg)
    if mixes:
        log.warning("comparing traces that differ in %s (--allow-mixed): part of every Δ may be the options' "
                    "difference", ", ".join(sorted({m["what"] for m in mixes})))
    labels = [t.label for t in traces]
    if len(set(labels)) != len(labels):
        raise InputError(f"trace labels must differ, got {labels}")
    lens_sizes = [t.meta.get("lens_tokens") for t in traces]
    by_token = [n for n, how in zip(lens_sizes, ["token", *pairings]) if how == "token"]
    if len(set(by_token)) > 1:  # nested subsamples of one seeded order: still paired by sequence, less tightly
        log.warning("the traces' L was read on different numbers of lens tokens (%s): ΔL stays paired by sequence "
                    "but each sequence's mean covers different tokens, which widens its interval; `spinal run` "
                    "reads every checkpoint on the reference's tokens", ", ".join(f"{l} {n}" for l, n in
                                                                                 zip(labels, lens_sizes)))
    n_blocks = int(max(traces[0].table["layer"]))
    term = terminal_layers(n_blocks)
    pairs = tuple(
        _pair(traces[0], t, term, seed, n_boot, null_splits, None if grad is None else grad[i], weights, how)
        for i, (t, how) in enumerate(zip(traces[1:], pairings), 1)
    )
    series_ok = len(traces) >= 3 and "prompt" not in pairings  # reply sides are not a training series
    series, ramp = training_series(traces, pairs, term, cfg.jump_factor) if series_ok else (None, None)
    meta = {"ramp_onset": ramp, "labels": labels, "reference": labels[0], "seed": seed, "n_boot": n_boot,
            "null_splits": null_splits, "jump_factor": cfg.jump_factor, "traces": [t.identity for t in traces],
            "lens_tokens": lens_sizes,
            "score_weights": list(weights), "terminal_layers": term, "n_blocks": n_blocks,
            "pairing": pairings, "pairing_asked": cfg.pairing, "mixed": mixes,
            "note": "Δ_align, coherence, gradient concentration and SPINALScore are this project's operational "
                    "definitions; the paper's exact formulas are not public."}
    return Comparison(pairs, series, meta)


def _pair(a: Trace, b: Trace, term, seed, n_boot, null_splits, grad, weights, how: str = "token") -> PairComparison:
    table, rep_a, rep_L_step = _paired_table(a, b, term, seed, n_boot, null_splits)
    by_prompt = {"pairing": "prompt", **token_count_note(a, b),
                 "skipped": {k: f"not computed: {why}" for k, why in TOKEN_ONLY.items()}}
    T = table["terminal"].to_numpy()
    summary = {
        "onset_a": _onset(table, "a"), "onset_L": _onset(table, "L"),
        "terminal_share_a": float(np.nansum(table["loc_a"].to_numpy()[T])),
        "terminal_share_L": float(np.nansum(table["loc_L"].to_numpy()[steps_into(T)])),
        **pair_aggregates(a, b, table, rep_a, rep_L_step, term, grad, weights),
        "terminal_layers": term,
        **(by_prompt if how == "prompt" else {"pairing": "token"}),
    }
    return PairComparison(a.label, b.label, table, summary)


def _paired_table(a: Trace, b: Trace, term, seed, n_boot, null_splits
                  ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The pair's per-layer table, and its bootstrap replicates of Δa (layer, n_boot) and ΔL (step, n_boot)."""
    layers = a.table["layer"].to_numpy()
    d_a = b.table["a"].to_numpy() - a.table["a"].to_numpy()
    rep_a = a.paired_boot(b)  # (layer, n_boot); where N ≤ 8·d with the paired exact jackknife's SE
    lo_a, hi_a, p_a = _ci_p(rep_a, d_a, int(a.meta.get("blocks_used") or 0))
    rng = seeds.rng(seed, seeds.Purpose.COMPARE)
    diff_seq = b.seq_L - a.seq_L  # (sequence, step) paired by sequence
    ok = np.isfinite(diff_seq).all(axis=1)
    diff_seq = diff_seq[ok]
    n_seq = diff_seq.shape[0]
    d_L_step = diff_seq.mean(axis=0) if n_seq else np.full(len(layers) - 1, np.nan)
    idx = rng.integers(0, n_seq, size=(n_boot, n_seq)) if n_seq else np.zeros((0, 0), int)
    rep_L_step = np.stack([diff_seq[i].mean(axis=0) for i in idx], axis=1) if n_seq else np.zeros((len(layers) - 1, 0))
    lo_L, hi_L, p_L = _ci_p(rep_L_step, d_L_step, n_seq)
    null_L_step = _split_half(a.seq_L[ok], rng, null_splits)
    pad = lambda x: np.append(x, np.nan)  # noqa: E731  (no step after the last layer)
    table = pd.DataFrame({
        "layer": layers, "d_a": d_a, "d_a_lo": lo_a, "d_a_hi": hi_a, "p_a": p_a, "p_a_holm": holm(p_a),
        "null_a": a.table["null_sd_a"].to_numpy(), "loc_a": _localization(d_a),
        "d_L": pad(d_L_step), "d_L_lo": pad(lo_L), "d_L_hi": pad(hi_L), "p_L": pad(p_L), "p_L_holm": pad(holm(p_L)),
        "null_L": pad(null_L_step), "loc_L": pad(_localization(d_L_step)),
        "terminal": np.isin(layers, term),
        **_rank_columns(a, b, int(a.meta.get("blocks_used") or 0)),
    })
    return table, rep_a, rep_L_step


def _rank_columns(a: Trace, b: Trace, groups: int) -> dict[str, np.ndarray]:
    """Δ effective rank and Δ RankMe per layer, with the paired interval of their first-order replicates (one seed:
    the same block draws in both) and Holm-adjusted p; NaN where a trace predates them (trace format < 5)."""
    out, n = {}, len(a.table)
    for name in RANKS:
        ra, rb = a.rank_boot.get(name), b.rank_boot.get(name)
        if name in a.table and name in b.table and ra is not None and rb is not None and ra.shape == rb.shape:
            d = b.table[name].to_numpy() - a.table[name].to_numpy()
            lo, hi, p = _ci_p(rb - ra, d, groups)
        else:
            d = lo = hi = p = np.full(n, np.nan)
        out.update({f"d_{name}": d, f"d_{name}_lo": lo, f"d_{name}_hi": hi, f"p_{name}_holm": holm(p)})
    return out


def _ci_p(rep: np.ndarray, point: np.ndarray, groups: int):
    """Per row of replicates (layer, n_boot) that resample ``groups`` independent groups: the centred t interval
    (``intervals.t_interval``) and a two-sided p-value of Δ / SE against Student's t with groups − 1 degrees of
    freedom, SE = √(g/(g−1))·sd(replicates).

    A p-value from the SE, not from the replicate-count fraction: Holm over ~30 layers needs p below 0.05/30,
    which a fraction of a few hundred replicates cannot reach.
    """
    from scipy.stats import t

    lo = np.full(point.shape, np.nan)
    hi = np.full(point.shape, np.nan)
    p = np.full(point.shape, np.nan)
    for i in range(point.size):
        r = rep[i] if rep.ndim == 2 and rep.shape[1] else np.zeros(0)
        lo[i], hi[i] = t_interval(float(point[i]), r, groups, LEVEL)
        if not np.isfinite(lo[i]):
            continue
        se = replicate_se(r, groups)
        p[i] = (1.0 if point[i] == 0 else 0.0) if se == 0 else float(2 * t.sf(abs(point[i]) / se, groups - 1))
    return lo, hi, p


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries are left out of the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _localization(d: np.ndarray) -> np.ndarray:
    total = np.nansum(np.abs(d))
    return np.abs(d) / total if total > 0 else np.zeros_like(d)


def _split_half(seq_L: np.ndarray, rng, splits: int) -> np.ndarray:
    n = seq_L.shape[0]
    if n < 2 or splits == 0:
        return np.full(seq_L.shape[1], np.nan)
    diffs = []
    for _ in range(splits):
        perm = rng.permutation(n)
        h = n // 2
        diffs.append(seq_L[perm[:h]].mean(axis=0) - seq_L[perm[h : 2 * h]].mean(axis=0))
    return np.sqrt(np.mean(np.square(diffs), axis=0))


def _onset(table: pd.DataFrame, x: str) -> int | None:
    d, null, p = (table[c].to_numpy() for c in (f"d_{x}", f"null_{x}", f"p_{x}_holm"))
    hit = np.flatnonzero(np.isfinite(d) & np.isfinite(null) & (np.abs(d) > null) & (p < 1 - LEVEL))
    return int(table["layer"].iloc[hit[0]]) if hit.size else None
