"""The comparison result: per-pair tables and the series, saved as one folder, checked against the inputs it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from spinal.analyze.trace_format import Trace
from spinal.errors import InputError
from spinal.outputs import atomic_folder, check_output, check_whole, jsonable

COMPARE_FORMAT = 1
DEFINITIONS = {
    "d_a": "Δa_ℓ = a_ℓ(other) − a_ℓ(ref), a the rank-decay exponent (σ_k ∝ k^-a), centered spectrum",
    "d_L": "ΔL_ℓ = mean over sequences of [mean L(other) − mean L(ref)] for step ℓ→ℓ+1 (paired by sequence)",
    "ci": "95% paired bootstrap, centred on Δ: Δ ± t(g−1)·√(g/(g−1))·SD of the replicates, which use the same g "
          "sequence blocks (α; first-order spectra, docs/method.md §2) / g sequences (L) in both checkpoints",
    "p": "two-sided p-value of Δ / bootstrap SE against Student's t with g − 1 degrees of freedom",
    "holm": "Holm step-down adjustment of the bootstrap p-values across layers, per quantity",
    "null": "null spread = RMS over random split-halves of the reference checkpoint's (half 1 − half 2)",
    "onset": "first layer with |Δ| > null spread and Holm-adjusted p < 0.05",
    "localization": "|Δx_ℓ| / Σ_ℓ |Δx_ℓ|; terminal share = its sum over the terminal window",
    "terminal": "blocks 21–30 when the model has ≥ 30 blocks, else layers ⌈0.7·n⌉…n (the same relative depth)",
    "delta_align": "terminal Δa − ΔL (METHOD's Δ_align; key delta_align): mean_T Δa − mean_T ΔL over the terminal "
    "window T (for L: the steps ℓ−1→ℓ that arrive in T, so the window is defined at any depth). Named for what it "
    "measures: on the known answers it falls as healthy DPO progresses (ΔL grows faster than Δa) and jumps "
    "positive at a collapse, so larger is not 'more aligned' (docs/results/destabilization.md)",
    "coherence": "terminal smoothness (METHOD's trajectory coherence; key coherence): 1 / (1 + mean_T κ), "
    "κ_ℓ = ‖x_{ℓ+1} − 2x_ℓ + x_{ℓ−1}‖ of the curve x_ℓ = (ℓ/n, z(a_ℓ), z(L_ℓ)). It measures how straight the "
    "standardized depth curve runs through the terminal window; on the known answers it does not rank the "
    "checkpoints by alignment progress",
    "grad_concentration": "operational: share of Σ‖θ_other − θ_ref‖² (per block, streamed from safetensors) in T",
    "destabilized": "training series, in training order: a checkpoint's step from the one before (RMS change of "
    "the a profile, of the L profile, or |Δ path length|) is more than jump_factor times the median of the same "
    "step over the earlier checkpoints that were not flagged, and beyond 3 of its own standard errors "
    "(analyze/compare/stability.py; step_*, step_*_se, step_*_ratio). Validated on the known answers (docs/results/destabilization.md)",
    "method_rule": "docs/method.md §4's wording, kept beside the flag for comparison: against the best value of the "
    "earlier checkpoints after the reference, the terminal a gain falls, the terminal ΔL rises, or coherence "
    "drops by more than its null spread. On the known answers it flags healthy DPO steps and misses the reference family's collapse",
    "ramp_onset": "first checkpoint in the series whose terminal a gain exceeds the null spread",
    "cross_readout": "per layer, mean Fisher–Rao distance between lens_ref(h_ref) and lens_other(h_other) (total), "
    "lens_ref(h_ref) and lens_ref(h_other) (the representation moved), lens_ref(h_other) and lens_other(h_other) "
    "(the readout moved)",
    "shifted_share": "share of token positions where the other checkpoint's most likely next token lies outside "
    "the reference's top 3 at the last layer (the model's own head), with a 95% bootstrap interval over sequences",
    "kl_final": "mean KL(p_other ‖ p_ref) in nats between the two checkpoints' final next-token distributions",
    "shift_early_share": "share of the shifted tokens that fall in the first 8 positions of the stored reply",
    "cka": "linear CKA between the two checkpoints' hidden states of layer ℓ on the identical tokens (a seeded "
    "subsample, compare.json's cka_tokens; plain estimator, Kornblith et al. 2019; compare.json's cka names the "
    "variant), with a delete-one-block "
    "jackknife interval over the sequence blocks (cka_lo, cka_hi, cka_se): 1 for identical representations up to "
    "rotation and scale",
    "d_erank": "Δ effective rank (exp of the entropy of the normalised centered eigenvalues) and d_rankme the same for "
    "RankMe (of the singular values), with the paired interval of their first-order block-bootstrap replicates and "
    "Holm-adjusted p (p_erank_holm, p_rankme_holm)",
    "depth_position": "per layer and position bin, the mean cross-readout distance fr_total over the tokens at "
    "those positions: where in depth and where in the reply the two checkpoints' lens predictions differ",
    "spinal_score": "operational: weighted mean of z-scores: Δ_align / its bootstrap SE, Δcoherence / null spread, "
    "(grad share − uniform share) / uniform share; weights recorded. It measures the size of the terminal window's "
    "change in noise units, not its quality: a collapsed checkpoint moves most and scores highest, so read it "
    "beside the verdict and the ground truth, never as 'better aligned'",
}

OLD_SERIES = ("not computed: this comparison predates the jump rule, its flag was METHOD §4's wording (shown "
              "beside it); re-run `spinal compare` for the steps")
LEVEL = 0.05  # Holm family-wise level of every "significant" in tables, plots and the verdict


def counts(table: pd.DataFrame, q: str) -> np.ndarray:
    """Rows of a pair's table whose change in ``q`` ('a' or 'L') counts: Holm-adjusted p below LEVEL and |Δ|
    beyond the null spread (the onset rule, DEFINITIONS['onset'])."""
    d = table[f"d_{q}"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(d) & (table[f"p_{q}_holm"].to_numpy(float) < LEVEL)
                & (np.abs(d) > table[f"null_{q}"].to_numpy(float)))


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
    """Every checkpoint against the reference, the training series (≥ 3 traces, else None) and the run's meta."""

    pairs: tuple[PairComparison, ...]
    series: pd.DataFrame | None  # per checkpoint in order: label, terminal_a_gain, terminal_L_change,
    #                              coherence, step_{a,L,path}[_se,_ratio], destabilized, reason,
    #                              method_rule, method_reason (analyze/compare/stability.py)
    meta: dict = field(default_factory=dict)
    positions: pd.DataFrame | None = None  # per pair and position bin: tokens, kl, shifted (with intervals)
    depth_position: pd.DataFrame | None = None  # per pair, layer and position bin: mean cross-readout fr_total

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
            for name in ("positions", "depth_position"):
                frame = getattr(self, name)
                if frame is not None:
                    frame.to_parquet(tmp / f"{name}.parquet", index=False)
                    frame.to_csv(tmp / f"{name}.csv", index=False)
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
        if series is not None and "step_a" not in series.columns:  # written before the jump rule (issue 16)
            series = series.assign(method_rule=series["destabilized"], method_reason=series["reason"],
                                   destabilized=False, reason=OLD_SERIES)
        meta = {k: v for k, v in doc.items() if k not in ("pairs", "series")}
        extra = {name: pd.read_parquet(p / f"{name}.parquet") if (p / f"{name}.parquet").exists() else None
                 for name in ("positions", "depth_position")}
        return cls(tuple(pairs), series, meta, **extra)

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


def check_weights(traces: list[Trace], folders: list[str]) -> list[str]:
    """``--weights``: one checkpoint folder (or Hub id) per trace, each the one its trace's store was captured
    from. Returns the folders, a Hub id's being its cached snapshot at the commit the trace's store recorded."""
    from spinal.checkpoint import fingerprint, is_hub_id, local_folder

    if len(folders) != len(traces):
        raise InputError(f"--weights: got {len(folders)} folders for {len(traces)} traces; give one per trace")
    out = []
    for t, f in zip(traces, folders):
        if is_hub_id(f):  # the snapshot the store was captured from, where the trace names this id
            f = local_folder(f, t.meta.get("revision") if t.meta.get("model") == f else None)
        p = Path(f)
        if not p.is_dir():
            raise InputError(f"--weights {f}: no checkpoint folder there")
        want = t.meta.get("weights_fingerprint")
        got = fingerprint(p)
        if want is not None and got != want:
            raise InputError(f"--weights {f} is not the checkpoint trace {t.label!r} was captured from (weights "
                             "fingerprint differs); give the folders in the traces' order")
        out.append(f)
    return out


def check_stores(traces: list[Trace], stores: list[str]) -> None:
    """``--stores``: one store per trace, each the one its trace was analyzed from."""
    from spinal.analyze.trace import tokens_sha256
    from spinal.store.contract import Store

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
    """Add cross-readout columns (fr_total, fr_representation, fr_readout) to each pair's table, keyed by label;
    the per-position-bin totals, where present, become the depth × position map."""
    from spinal.analyze.compare.positions import bin_labels

    pairs, maps = [], []
    for p in comparison.pairs:
        f = frames.get(p.other)
        if f is not None and "fr_total_by_bin" in f:
            labels = bin_labels()
            for _, r in f.iterrows():
                maps += [{"ref": p.ref, "other": p.other, "layer": int(r["layer"]), "bin": labels[i], "bin_index": i,
                          "fr_total": v, "tokens": n}
                         for i, (v, n) in enumerate(zip(r["fr_total_by_bin"], r["tokens_by_bin"])) if n > 0]
            f = f.drop(columns=["fr_total_by_bin", "tokens_by_bin"])
        t = p.table if f is None else p.table.merge(f.drop(columns=["tokens"]), on="layer", how="left")
        pairs.append(PairComparison(p.ref, p.other, t, p.summary))
    depth = pd.DataFrame(maps) if maps else comparison.depth_position
    return replace(comparison, pairs=tuple(pairs), depth_position=depth)


def with_positions(comparison: Comparison, profiles: dict[str, pd.DataFrame]) -> Comparison:
    """Add each pair's per-position profile (positions.profile) and its headline numbers to the summary:
    shifted_share with its interval, kl_final_mean, shift_early_share."""
    from spinal.analyze.compare.positions import early_share

    pairs, frames = [], []
    for p in comparison.pairs:
        prof = profiles.get(p.other)
        summary = dict(p.summary)
        if prof is not None:
            row = prof[prof["bin"] == "all"].iloc[0]
            summary.update(shifted_share=float(row["shifted"]), shifted_share_lo=float(row["shifted_lo"]),
                           shifted_share_hi=float(row["shifted_hi"]), kl_final_mean=float(row["kl"]),
                           kl_final_lo=float(row["kl_lo"]), kl_final_hi=float(row["kl_hi"]),
                           shift_early_share=early_share(prof))
            frames.append(prof.assign(ref=p.ref, other=p.other))
        pairs.append(PairComparison(p.ref, p.other, p.table, summary))
    positions = pd.concat(frames, ignore_index=True) if frames else comparison.positions
    return replace(comparison, pairs=tuple(pairs), positions=positions)
