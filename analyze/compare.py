"""Compare depth traces of checkpoints on one token stream: paired bootstrap Δ per layer, Holm, null spread, localization.

Aggregates (Δ_align, coherence, gradient concentration, SPINALScore) are this project's
operational definitions: the paper's exact formulas are not public (METHOD.md §4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spinal.analyze.trace import Trace, jsonable
from spinal.errors import InputError
from spinal.outputs import atomic_folder, check_output, check_whole

COMPARE_FORMAT = 1
LEVEL = 0.95  # two-sided CI level and family-wise α = 0.05 for Holm
DEFINITIONS = {
    "d_a": "Δa_ℓ = a_ℓ(other) − a_ℓ(ref), a the rank-decay exponent (σ_k ∝ k^-a), centered spectrum",
    "d_L": "ΔL_ℓ = mean over sequences of [mean L(other) − mean L(ref)] for step ℓ→ℓ+1 (paired by sequence)",
    "ci": "95% paired bootstrap: replicate b uses the same sequence blocks (α) / sequences (L) in both checkpoints",
    "p": "two-sided Wald p-value, Δ / bootstrap SE against the normal distribution",
    "holm": "Holm step-down adjustment of the bootstrap p-values across layers, per quantity",
    "null": "null spread = RMS over random split-halves of the reference checkpoint's (half 1 − half 2)",
    "onset": "first layer with |Δ| > null spread and Holm-adjusted p < 0.05",
    "localization": "|Δx_ℓ| / Σ_ℓ |Δx_ℓ|; terminal share = its sum over the terminal window",
    "terminal": "blocks 21–30 when the model has ≥ 30 blocks, else layers ⌈0.7·n⌉…n (the same relative depth)",
    "delta_align": "operational: mean_T Δa − mean_T ΔL over the terminal window T (for L: the steps ℓ−1→ℓ "
    "that arrive in T, so the window is defined at any depth)",
    "coherence": "operational: 1 / (1 + mean_T κ), κ_ℓ = ‖x_{ℓ+1} − 2x_ℓ + x_{ℓ−1}‖ of the curve x_ℓ = (ℓ/n, z(a_ℓ), z(L_ℓ))",
    "grad_concentration": "operational: share of Σ‖θ_other − θ_ref‖² (per block, streamed from safetensors) in T",
    "destabilized": "training series: against the best value of the earlier checkpoints after the reference, the "
    "terminal a gain falls by more than the null spread, the terminal ΔL rises by more than the null spread, or "
    "coherence drops by more than its bootstrap spread",
    "ramp_onset": "first checkpoint in the series whose terminal a gain exceeds the null spread",
    "cross_readout": "per layer, mean Fisher–Rao distance between lens_ref(h_ref) and lens_other(h_other) (total), "
    "lens_ref(h_ref) and lens_ref(h_other) (the representation moved), lens_ref(h_other) and lens_other(h_other) "
    "(the readout moved)",
    "spinal_score": "operational: weighted sum of z-scores: Δ_align / its bootstrap SE, Δcoherence / null spread, "
    "(grad share − uniform share) / uniform share; weights recorded",
}


@dataclass(frozen=True)
class PairComparison:
    """One checkpoint against the reference. ``table``: one row per layer (columns in DEFINITIONS' terms)."""

    ref: str
    other: str
    table: pd.DataFrame  # layer, d_a, d_a_lo, d_a_hi, p_a, p_a_holm, null_a, loc_a, d_L, d_L_lo, d_L_hi,
    #                      p_L, p_L_holm, null_L, loc_L, terminal
    summary: dict  # onset_a, onset_L, terminal_share_a, terminal_share_L, delta_align, delta_align_se,
    #                coherence_ref, coherence_other, d_coherence, grad_concentration, grad_per_block,
    #                spinal_score, terminal_layers


@dataclass(frozen=True)
class Comparison:
    pairs: tuple[PairComparison, ...]
    series: pd.DataFrame | None  # per checkpoint in order: label, terminal_a_gain, terminal_L_change,
    #                              coherence, destabilized, reason
    meta: dict = field(default_factory=dict)

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the comparison folder whole or not at all (temporary sibling, swapped in)."""
        out = Path(out)
        check_output(out, "comparison", overwrite)
        with atomic_folder(out, "comparison", {"traces": self.meta.get("traces")}) as tmp:
            frames = [p.table.assign(ref=p.ref, other=p.other) for p in self.pairs]
            pd.concat(frames).to_parquet(tmp / "compare.parquet", index=False)
            pd.concat(frames).to_csv(tmp / "compare.csv", index=False)
            if self.series is not None:
                self.series.to_csv(tmp / "series.csv", index=False)
            doc = {**self.meta, "compare_format": COMPARE_FORMAT, "definitions": DEFINITIONS,
                   "pairs": [{"ref": p.ref, "other": p.other, **p.summary} for p in self.pairs],
                   "series": None if self.series is None else self.series.to_dict(orient="records")}
            (tmp / "compare.json").write_text(json.dumps(doc, indent=2, default=jsonable))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Comparison":
        p = Path(path)
        if not (p / "compare.json").exists():
            raise InputError(f"{p} is not a comparison folder (no compare.json); make one with `spinal compare`")
        check_whole(p, "comparison")
        try:
            doc = json.loads((p / "compare.json").read_text())
            if doc.get("compare_format", 0) > COMPARE_FORMAT:
                raise InputError(f"{p} has comparison format {doc['compare_format']}; upgrade spinal")
            df = pd.read_parquet(p / "compare.parquet")
            pairs = []
            for s in doc["pairs"]:
                t = df[(df["ref"] == s["ref"]) & (df["other"] == s["other"])].drop(columns=["ref", "other"])
                summary = {k: v for k, v in s.items() if k not in ("ref", "other")}
                pairs.append(PairComparison(s["ref"], s["other"], t.reset_index(drop=True), summary))
        except InputError:
            raise
        except Exception as e:  # a torn file of a folder without digests (SPINAL 0.1)
            raise InputError(f"{p}: the comparison cannot be read ({type(e).__name__}: {e}); rerun "
                             "`spinal compare … --overwrite`") from None
        series = pd.DataFrame(doc["series"]) if doc.get("series") else None
        meta = {k: v for k, v in doc.items() if k not in ("pairs", "series")}
        return cls(tuple(pairs), series, meta)

    def check_traces(self, traces: list[Trace], where: str) -> None:
        """Refuse traces other than the ones this comparison was computed from."""
        recorded = self.meta.get("traces")
        given = [t.identity for t in traces]
        if recorded is None:  # SPINAL 0.1: only labels are known
            labels = {p.ref for p in self.pairs} | {p.other for p in self.pairs}
            extra = sorted(labels - {g["label"] for g in given})
            if extra:
                raise InputError(f"{where}: the comparison covers {sorted(labels)}, not the traces given "
                                 f"({[g['label'] for g in given]})")
            return
        by_label = {r["label"]: r for r in recorded}
        for g in given:
            r = by_label.get(g["label"])
            if r is None:
                raise InputError(f"{where}: trace {g['label']!r} is not in the comparison (it compares "
                                 f"{', '.join(by_label)}); pass the comparison of these traces")
            for key in ("tokens_sha256", "weights_fingerprint", "created", "trace_id"):
                if r.get(key) != g.get(key):
                    raise InputError(f"{where}: trace {g['label']!r} is not the one the comparison was computed "
                                     f"from ({key} differs: the trace was remade or comes from another run); "
                                     "rerun `spinal compare`")


def check_weights(traces: list[Trace], folders: list[str]) -> None:
    """``--weights``: one checkpoint folder per trace, each the one its trace's store was captured from."""
    from spinal.capture.load import fingerprint

    if len(folders) != len(traces):
        raise InputError(f"--weights: got {len(folders)} folders for {len(traces)} traces; give one per trace")
    for t, f in zip(traces, folders):
        p = Path(f)
        if not p.is_dir():
            raise InputError(f"--weights {f}: no checkpoint folder there")
        want = t.meta.get("weights_fingerprint")
        got = fingerprint(p)
        if want is not None and got != want:
            raise InputError(f"--weights {f} is not the checkpoint trace {t.label!r} was captured from (weights "
                             "fingerprint differs); give the folders in the traces' order")


def check_stores(traces: list[Trace], stores: list[str]) -> None:
    """``--stores``: one store per trace, each the one its trace was analyzed from."""
    from spinal.analyze.trace import tokens_sha256
    from spinal.store import Store

    if len(stores) != len(traces):
        raise InputError(f"--stores: got {len(stores)} stores for {len(traces)} traces; give one per trace")
    for t, path in zip(traces, stores):
        s = Store.open(path)
        s.check_tables()
        same = (s.meta.get("identity") == t.meta.get("store_identity")
                and tokens_sha256(s) == t.meta.get("tokens_sha256"))
        if not same:
            raise InputError(f"--stores {path} is not the store trace {t.label!r} was analyzed from (its capture "
                             "identity or token stream differs); give the stores in the traces' order")


def with_cross_readout(comparison: Comparison, frames: dict[str, pd.DataFrame]) -> Comparison:
    """Add cross-readout columns (fr_total, fr_representation, fr_readout) to each pair's table, keyed by label."""
    pairs = []
    for p in comparison.pairs:
        f = frames.get(p.other)
        t = p.table if f is None else p.table.merge(f.drop(columns=["tokens"]), on="layer", how="left")
        pairs.append(PairComparison(p.ref, p.other, t, p.summary))
    return Comparison(tuple(pairs), comparison.series, comparison.meta)


def terminal_layers(n_blocks: int) -> list[int]:
    """Blocks 21–30 when the model has ≥ 30 blocks, else the same relative depth ⌈0.7·n⌉…n (METHOD.md §4)."""
    if n_blocks >= 30:
        return list(range(21, 31))
    return list(range(max(1, math.ceil(0.7 * n_blocks)), n_blocks + 1))


def check_comparable(traces: list[Trace]) -> None:
    """Identical token stream, layers and bootstrap design; else one clear refusal."""
    ref = traces[0]
    for t in traces[1:]:
        if t.meta["tokens_sha256"] != ref.meta["tokens_sha256"]:
            raise InputError(
                f"{t.label} and {ref.label} were captured on different token streams (prompts, tokenizer or "
                "positions differ); compare checkpoints on the identical prompt set and options"
            )
        if list(t.table["layer"]) != list(ref.table["layer"]):
            raise InputError(f"{t.label} has layers {list(t.table['layer'])}, {ref.label} has {list(ref.table['layer'])}")
        for k in ("seed", "blocks", "n_boot", "window", "lens_tokens"):
            if t.meta["options"].get(k) != ref.meta["options"].get(k):
                raise InputError(
                    f"{t.label} was analyzed with {k}={t.meta['options'].get(k)}, {ref.label} with "
                    f"{ref.meta['options'].get(k)}; paired statistics need the same analysis options"
                )
        if t.meta.get("architecture") != ref.meta.get("architecture"):
            raise InputError(f"{t.label} is a {t.meta.get('architecture')}, {ref.label} a {ref.meta.get('architecture')}: "
                             "not checkpoints of one model")


def compare(traces: list[Trace], *, seed: int = 0, n_boot: int = 1000, null_splits: int = 32,
            grad: list[np.ndarray | None] | None = None, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
            ) -> Comparison:
    """Compare each trace with the first (the reference); with ≥ 3 traces also a training-series summary.

    ``grad[i]``: per-block ‖θ_i − θ_ref‖² (block 1…n) when the checkpoints' weights are at hand.
    """
    if len(traces) < 2:
        raise InputError("compare needs at least two traces: a reference and a checkpoint to compare with it")
    if n_boot < 1:
        raise InputError(f"n_boot={n_boot}; the ΔL bootstrap needs ≥ 1 resample (1000 is the default)")
    check_comparable(traces)
    labels = [t.label for t in traces]
    if len(set(labels)) != len(labels):
        raise InputError(f"trace labels must differ, got {labels}")
    n_blocks = int(max(traces[0].table["layer"]))
    term = terminal_layers(n_blocks)
    pairs = tuple(
        _pair(traces[0], t, term, seed, n_boot, null_splits, None if grad is None else grad[i], weights)
        for i, t in enumerate(traces[1:], 1)
    )
    series, ramp = _series(traces, pairs, term) if len(traces) >= 3 else (None, None)
    meta = {"ramp_onset": ramp, "labels": labels, "reference": labels[0], "seed": seed, "n_boot": n_boot,
            "null_splits": null_splits, "traces": [t.identity for t in traces],
            "score_weights": list(weights), "terminal_layers": term, "n_blocks": n_blocks,
            "note": "Δ_align, coherence, gradient concentration and SPINALScore are this project's operational "
                    "definitions; the paper's exact formulas are not public."}
    return Comparison(pairs, series, meta)


def _pair(a: Trace, b: Trace, term, seed, n_boot, null_splits, grad, weights) -> PairComparison:
    layers = a.table["layer"].to_numpy()
    d_a = b.table["a"].to_numpy() - a.table["a"].to_numpy()
    rep_a = b.boot - a.boot  # (layer, n_boot): replicate b drew the same blocks in both (same seed)
    lo_a, hi_a, p_a = _ci_p(rep_a, d_a)
    rng = np.random.default_rng([seed, 7])
    diff_seq = b.seq_L - a.seq_L  # (sequence, step) paired by sequence
    ok = np.isfinite(diff_seq).all(axis=1)
    diff_seq = diff_seq[ok]
    n_seq = diff_seq.shape[0]
    d_L_step = diff_seq.mean(axis=0) if n_seq else np.full(len(layers) - 1, np.nan)
    idx = rng.integers(0, n_seq, size=(n_boot, n_seq)) if n_seq else np.zeros((0, 0), int)
    rep_L_step = np.stack([diff_seq[i].mean(axis=0) for i in idx], axis=1) if n_seq else np.zeros((len(layers) - 1, 0))
    lo_L, hi_L, p_L = _ci_p(rep_L_step, d_L_step)
    null_L_step = _split_half(a.seq_L[ok], rng, null_splits)
    pad = lambda x: np.append(x, np.nan)  # noqa: E731  (no step after the last layer)
    table = pd.DataFrame({
        "layer": layers, "d_a": d_a, "d_a_lo": lo_a, "d_a_hi": hi_a, "p_a": p_a, "p_a_holm": holm(p_a),
        "null_a": a.table["null_sd_a"].to_numpy(), "loc_a": _localization(d_a),
        "d_L": pad(d_L_step), "d_L_lo": pad(lo_L), "d_L_hi": pad(hi_L), "p_L": pad(p_L), "p_L_holm": pad(holm(p_L)),
        "null_L": pad(null_L_step), "loc_L": pad(_localization(d_L_step)),
        "terminal": np.isin(layers, term),
    })
    T = table["terminal"].to_numpy()
    TL = steps_into(T)
    delta_align = _nanmean(d_a[T]) - _nanmean(table["d_L"].to_numpy()[TL])
    # SE of Δ_align from the replicates (the a and L replicates are drawn independently)
    rep_LT = pad_rows(rep_L_step)[TL]
    rep_LT = rep_LT[np.isfinite(rep_LT).all(axis=1)]
    se = math.sqrt(_nanvar(rep_a[T].mean(axis=0)) + (_nanvar(rep_LT.mean(axis=0)) if rep_LT.size else 0.0))
    coh_a, coh_b = coherence(a, term), coherence(b, term)
    grad_share = None if grad is None else float(np.sum(grad[np.array(term) - 1]) / np.sum(grad))
    uniform = len(term) / n_blocks_of(a)
    null_coh = _coherence_null(a, term)
    z = [delta_align / se if se > 0 else math.nan,
         (coh_b - coh_a) / null_coh if null_coh > 0 else math.nan,
         (grad_share - uniform) / uniform if grad_share is not None else math.nan]
    used = [(w, zi) for w, zi in zip(weights, z) if math.isfinite(zi)]
    score = float(sum(w * zi for w, zi in used) / sum(w for w, _ in used)) if used else math.nan
    summary = {
        "onset_a": _onset(table, "a"), "onset_L": _onset(table, "L"),
        "terminal_share_a": float(np.nansum(table["loc_a"].to_numpy()[T])),
        "terminal_share_L": float(np.nansum(table["loc_L"].to_numpy()[TL])),
        "delta_align": delta_align, "delta_align_se": se,
        "coherence_ref": coh_a, "coherence_other": coh_b, "d_coherence": coh_b - coh_a,
        "grad_concentration": grad_share, "grad_per_block": None if grad is None else [float(g) for g in grad],
        "spinal_score": score, "score_z": z, "terminal_layers": term,
    }
    return PairComparison(a.label, b.label, table, summary)


def steps_into(T: np.ndarray) -> np.ndarray:
    """Row mask of the L steps that arrive in the window: step ℓ−1→ℓ (stored on row ℓ−1) for ℓ in T.

    Defined for any depth, including a window that ends at the last layer (which has no outgoing step).
    """
    T = np.asarray(T, dtype=bool)
    out = np.zeros_like(T)
    out[:-1] = T[1:]
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _nanvar(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.var()) if x.size > 1 else math.nan


def pad_rows(x: np.ndarray) -> np.ndarray:
    return np.vstack([x, np.full((1, x.shape[1]), np.nan)])


def n_blocks_of(t: Trace) -> int:
    return int(max(t.table["layer"]))


def _ci_p(rep: np.ndarray, point: np.ndarray):
    """Percentile CI per row of replicates (layer, n_boot), and a two-sided Wald p-value with the bootstrap SE.

    The Wald form (not the replicate-count fraction) is used because Holm over ~30 layers needs
    p-values below 0.05/30, which a percentile p-value from a few hundred replicates cannot reach.
    """
    from scipy.stats import norm

    lo = np.full(point.shape, np.nan)
    hi = np.full(point.shape, np.nan)
    p = np.full(point.shape, np.nan)
    for i in range(point.size):
        r = rep[i] if rep.ndim == 2 and rep.shape[1] else np.zeros(0)
        if r.size < 2 or not np.isfinite(r).all() or not np.isfinite(point[i]):
            continue
        lo[i], hi[i] = np.percentile(r, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        se = float(r.std(ddof=1))
        if se == 0:
            p[i] = 1.0 if point[i] == 0 else 0.0
        else:
            p[i] = float(2 * norm.sf(abs(point[i]) / se))
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


def coherence(t: Trace, term: list[int]) -> float:
    """1 / (1 + mean_T κ), κ the second-difference norm of (ℓ/n, z(a), z(L)) (operational definition)."""
    tab = t.table
    n = n_blocks_of(t)
    L = tab["L_mean"].to_numpy().copy()
    L[-1] = L[-2] if L.size > 1 else 0.0  # the last layer has no outgoing step: hold the last value
    x = np.stack([tab["layer"].to_numpy() / n, _z(tab["a"].to_numpy()), _z(L)], axis=1)  # (layer, 3)
    kappa = np.full(len(x), np.nan)
    kappa[1:-1] = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=1)
    sel = np.isin(tab["layer"].to_numpy(), term) & np.isfinite(kappa)
    return float(1 / (1 + kappa[sel].mean())) if sel.any() else math.nan


def _coherence_null(t: Trace, term: list[int]) -> float:
    """Spread of coherence under the a-curve's bootstrap (scale for the Δcoherence z-score)."""
    if t.boot.shape[1] < 2:
        return math.nan
    vals = []
    for b in range(min(t.boot.shape[1], 100)):
        tab = t.table.assign(a=t.boot[:, b])
        vals.append(coherence(Trace(tab, t.meta, t.boot, t.seq_L, {}), term))
    vals = np.array(vals)
    return float(np.nanstd(vals)) if np.isfinite(vals).sum() > 1 else math.nan


def _z(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / sd if sd > 0 else np.zeros_like(x)


def _series(traces: list[Trace], pairs, term) -> tuple[pd.DataFrame, str | None]:
    """Training series: terminal gains against the reference, and a destabilization flag per checkpoint."""
    rows = [{"label": traces[0].label, "terminal_a_gain": 0.0, "terminal_L_change": 0.0,
             "coherence": coherence(traces[0], term), "destabilized": False, "reason": ""}]
    for p in pairs:
        T = p.table["terminal"].to_numpy()
        rows.append({"label": p.other, "terminal_a_gain": _nanmean(p.table["d_a"].to_numpy()[T]),
                     "terminal_L_change": _nanmean(p.table["d_L"].to_numpy()[steps_into(T)]),
                     "coherence": p.summary["coherence_other"], "destabilized": False, "reason": ""})
    T0 = pairs[0].table["terminal"].to_numpy()
    null_a = _nanmean(pairs[0].table["null_a"].to_numpy()[T0])
    null_L = _nanmean(pairs[0].table["null_L"].to_numpy()[steps_into(T0)])
    null_coh = _coherence_null(traces[0], term)
    if not math.isfinite(null_coh) or null_coh <= 0:
        null_coh = 0.1 * rows[0]["coherence"]  # no bootstrap: a 10% drop stands in for the null spread
    # "Reverses" / "rises again" / "drops" compare a checkpoint with the best value reached by the
    # earlier checkpoints of the series (the reference excluded): the first step cannot reverse.
    first = rows[1]
    best_a, best_L, best_coh = first["terminal_a_gain"], first["terminal_L_change"], first["coherence"]
    for r in rows[2:]:
        why = []
        if r["terminal_a_gain"] < best_a - null_a:
            why.append(f"terminal a gain fell {best_a - r['terminal_a_gain']:.3g} below its best")
        if r["terminal_L_change"] > best_L + null_L:
            why.append(f"terminal L rose {r['terminal_L_change'] - best_L:.3g} above its lowest")
        if math.isfinite(r["coherence"]) and math.isfinite(best_coh) and r["coherence"] < best_coh - null_coh:
            why.append(f"coherence dropped to {r['coherence']:.3g} from {best_coh:.3g}")
        r["destabilized"] = bool(why)
        r["reason"] = "; ".join(why)
        best_a, best_L = max(best_a, r["terminal_a_gain"]), min(best_L, r["terminal_L_change"])
        best_coh = max(best_coh, r["coherence"]) if math.isfinite(r["coherence"]) else best_coh
    ramp = [r["label"] for r in rows[1:] if r["terminal_a_gain"] > null_a]
    return pd.DataFrame(rows), (ramp[0] if ramp else None)
