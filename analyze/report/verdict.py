"""The report's verdict: a few sentences per checkpoint, each computed from the comparison's numbers.

Pure: traces and a comparison in, sentences out (no HTML, no I/O). One sentence each for where the
change concentrates, how strongly, whether the paper's two signatures appear, what the fits allow,
and the destabilization rule; every claim names the numbers it rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spinal.analyze.compare.aggregates import nanmean, steps_into
from spinal.analyze.compare.comparison import LEVEL, Comparison, PairComparison, counts
from spinal.analyze.compare.stability import largest_ratio
from spinal.analyze.trace_format import Trace
from spinal.text import ranges

SPREAD = 0.75  # a change beyond the noise at this share of layers or more is "throughout depth"


@dataclass(frozen=True)
class Verdict:
    """One checkpoint's verdict. ``points``: (topic, sentence) in reading order; ``more``: secondary numbers;
    ``caveat``: what the fits allow, when they do not allow reading a as one exponent."""

    title: str
    headline: str
    points: tuple[tuple[str, str], ...]
    more: tuple[tuple[str, str], ...] = ()
    caveat: str | None = None
    flagged: bool = False


def onset_text(v, q: str) -> str:
    """The onset of a (a layer) or of L (a step ℓ→ℓ+1), never a bare 0 that could read as 'none'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "none"
    return f"layer {int(v)}" if q == "a" else f"step {int(v)}→{int(v) + 1}"


def _status(tr: Trace, layers: list[int]) -> dict[int, str]:
    """Non-ok fit statuses of ``tr`` at ``layers``."""
    tab = tr.table.set_index("layer")
    out = {}
    for layer in layers:
        s = tab["status"].get(layer) if layer in tab.index else None
        if s != "ok":
            out[layer] = s if isinstance(s, str) else "no fit"
    return out


@dataclass(frozen=True)
class _Pair:
    """The numbers of one pair that its sentences rest on (terminal window T, the steps TL arriving in it)."""

    t: pd.DataFrame  # the pair's per-layer table, indexed 0…n−1
    layers: np.ndarray
    T: np.ndarray
    TL: np.ndarray
    d_a: np.ndarray
    d_L: np.ndarray
    c_a: np.ndarray  # layers whose Δa counts (Holm and beyond the noise)
    c_L: np.ndarray
    n_a: int  # layers with a finite Δa
    n_L: int
    window: str  # the terminal window in words
    uniform: float  # the terminal window's share of the layers: its share of |Δa| if the change were uniform
    share: float  # its share of |Δa|
    gain_a: float  # terminal mean Δa and ΔL, and the null spread over the same layers (steps)
    gain_L: float
    null_a: float
    null_L: float
    peak: int | None  # the row of the largest |Δa|


def _numbers(p: PairComparison) -> _Pair:
    t = p.table.reset_index(drop=True)
    layers = t["layer"].to_numpy(int)
    T = t["terminal"].to_numpy(bool)
    TL = steps_into(T)
    d_a, d_L = t["d_a"].to_numpy(float), t["d_L"].to_numpy(float)
    n_a = int(np.isfinite(d_a).sum())
    term = [int(x) for x in layers[T]]
    return _Pair(t, layers, T, TL, d_a, d_L, counts(t, "a"), counts(t, "L"), n_a, int(np.isfinite(d_L).sum()),
                 f"layers {term[0]}–{term[-1]}" if term else "the terminal window", T.sum() / max(n_a, 1),
                 float(p.summary.get("terminal_share_a") or math.nan), nanmean(d_a[T]), nanmean(d_L[TL]),
                 nanmean(t["null_a"].to_numpy(float)[T]), nanmean(t["null_L"].to_numpy(float)[TL]),
                 int(np.nanargmax(np.abs(d_a))) if np.isfinite(d_a).any() else None)


def _where(n: _Pair) -> tuple[str, bool]:
    """Where the change in a concentrates, and whether it spreads throughout depth."""
    if not n.c_a.any():
        where = (f"a moves beyond the split-half noise at no layer (largest |Δa| {abs(n.d_a[n.peak]):.3f} at layer "
                 f"{n.layers[n.peak]})" if n.peak is not None else "no layer has a fitted a in both checkpoints")
        return where, False
    spread = n.c_a.sum() >= SPREAD * n.n_a and not (n.share > 1.5 * n.uniform)
    moved = ranges([int(x) for x in n.layers[n.c_a]])
    if spread:
        return (f"a changes throughout depth, at {n.c_a.sum()} of {n.n_a} layers beyond the noise, not only late; "
                f"the terminal window holds {n.share:.0%} of |Δa| ({n.uniform:.0%} if uniform)"), True
    if n.share > n.uniform:
        return (f"the change in a concentrates late: {n.window} hold {n.share:.0%} of |Δa| ({n.uniform:.0%} if "
                f"uniform); a moves beyond the noise at layers {moved}"), False
    return (f"the change in a is not concentrated late: {n.window} hold {n.share:.0%} of |Δa| "
            f"({n.uniform:.0%} if uniform); a moves beyond the noise at layers {moved}"), False


def _strength(n: _Pair) -> str:
    """How strongly: the terminal means against the noise, and the largest Δa with its interval."""
    times = lambda g, null: f" ({abs(g) / null:.1f}× the noise)" if null > 0 and math.isfinite(g) else ""  # noqa: E731
    strength = (f"terminal mean Δa {n.gain_a:+.3f}{times(n.gain_a, n.null_a)}, "
                f"ΔL {n.gain_L:+.3f} rad{times(n.gain_L, n.null_L)}")
    if n.peak is not None:
        strength += (f"; largest Δa {n.d_a[n.peak]:+.3f} [{n.t['d_a_lo'].iloc[n.peak]:+.3f}, "
                     f"{n.t['d_a_hi'].iloc[n.peak]:+.3f}] at layer {n.layers[n.peak]}")
    return strength


def _signatures(n: _Pair, spread: bool) -> tuple[str, bool]:
    """The paper's two signatures, and whether the ramp is there. Each needs the terminal mean beyond the noise, a
    terminal layer (step) that counts in the same direction, and, for the ramp, a change concentrated late rather
    than everywhere."""
    late_a = bool((n.c_a & n.T & (n.d_a > 0)).any())
    why_not_ramp = ("terminal Δa is not positive" if not n.gain_a > 0 else
                    f"terminal mean Δa {n.gain_a:+.3f} is within the noise ±{n.null_a:.3f}" if not n.gain_a > n.null_a
                    else "a moves at every depth, not only late" if spread else
                    "the terminal window holds no more than its uniform share of |Δa|" if not n.share > n.uniform else
                    "no terminal layer beyond the noise" if not late_a else None)
    late_L = bool((n.c_L & n.TL & (n.d_L < 0)).any())
    why_not_drop = (f"terminal ΔL {n.gain_L:+.3f}: adjacent readouts move more" if n.gain_L > 0 else
                    "terminal ΔL is not negative" if not n.gain_L < 0 else
                    f"terminal mean ΔL {n.gain_L:+.3f} is within the noise ±{n.null_L:.3f}" if not -n.gain_L > n.null_L
                    else "no terminal step beyond the noise" if not late_L else None)
    ramp, drop = why_not_ramp is None, why_not_drop is None
    return ("late-layer α ramp: " + ("yes" if ramp else f"no ({why_not_ramp})")
            + "; smaller L in the terminal window: " + ("yes" if drop else f"no ({why_not_drop})")), ramp


def _predictions(n: _Pair) -> str | None:
    """How far apart the lens predictions end up on the same tokens (with the cross-readout columns)."""
    t = n.t
    if "fr_total" not in t.columns or not np.isfinite(t["fr_total"].to_numpy(float)).any():
        return None
    last = int(np.flatnonzero(np.isfinite(t["fr_total"].to_numpy(float)))[-1])
    return (f"on the same tokens, the lens predictions at layer {n.layers[last]} differ by Fisher–Rao "
            f"{t['fr_total'].iloc[last]:.3f} rad (the representation moved {t['fr_representation'].iloc[last]:.3f}, "
            f"the readout {t['fr_readout'].iloc[last]:.3f})")


def _sequence(p: PairComparison) -> str | None:
    """Where in the reply the top token moves (with the per-position profile)."""
    shifted = p.summary.get("shifted_share")
    if not (isinstance(shifted, (int, float)) and math.isfinite(shifted)):
        return None
    early = p.summary.get("shift_early_share")
    return (f"the top token leaves {p.ref}'s top 3 at {shifted:.1%} "
            f"[{p.summary.get('shifted_share_lo', math.nan):.1%}, "
            f"{p.summary.get('shifted_share_hi', math.nan):.1%}] of reply positions"
            + (f", {early:.0%} of them in the first 8" if isinstance(early, float) and math.isfinite(early) else "")
            + f"; mean final KL {p.summary.get('kl_final_mean', math.nan):.3f} nats")


def _output(p: PairComparison, ref: Trace | None, other: Trace | None) -> str | None:
    """The final layer's entropy and the path lengths of both checkpoints."""
    if ref is None or other is None or "entropy" not in other.table:
        return None
    e_ref, e_oth = float(ref.table["entropy"].iloc[-1]), float(other.table["entropy"].iloc[-1])
    pl_ref, pl_oth = ref.meta.get("path_length"), other.meta.get("path_length")
    if not (math.isfinite(e_ref) and math.isfinite(e_oth)):
        return None
    txt = f"final-layer entropy {e_oth:.2f} nats ({p.ref}: {e_ref:.2f})"
    if isinstance(pl_ref, (int, float)) and isinstance(pl_oth, (int, float)):
        txt += f"; path length Σ L {pl_oth:.2f} ({p.ref}: {pl_ref:.2f})"
    return txt


def _stability(series_row: dict) -> str:
    """The destabilization rule's finding for this checkpoint (its row of the series table)."""
    reason = series_row.get("reason") or ""
    if series_row.get("destabilized"):
        txt = f"flagged destabilized: {reason}"
    elif reason:  # the first checkpoint after the reference has no earlier step
        txt = f"not judged ({reason})"
    else:
        top = largest_ratio(series_row)
        txt = ("not flagged" if top is None else
               f"not flagged: its step from the checkpoint before is at most {top:.1f}x the run's typical "
               "healthy step")
    if series_row.get("method_rule"):
        txt += f" (METHOD §4's wording would flag it: {series_row.get('method_reason')})"
    return txt


def _caveat(p: PairComparison, n: _Pair, ref: Trace | None, other: Trace | None, ramp: bool) -> str | None:
    """What the fits allow at the layers the headline rests on (nothing counts: no caveat)."""
    rest = [int(x) for x in n.layers[n.c_a & n.T]] if ramp else [int(x) for x in n.layers[n.c_a]]
    if ref is None or other is None or not rest:
        return None
    in_ref, in_other = _status(ref, rest), _status(other, rest)  # layer -> a status that is not ok
    bad = {**in_ref, **in_other}
    if not bad:
        return None
    kinds = " or ".join(sorted(set(in_ref.values()) | set(in_other.values())))
    which = ("the layer" if len(rest) == 1 else "all the layers" if len(bad) == len(rest) else
             f"{len(bad)} of the {len(rest)} layers")
    return (f"{which} this rests on ({'layer' if len(bad) == 1 else 'layers'} {ranges(list(bad))}) fit "
            f"{kinds} in {p.ref} or {p.other}: a there is an average slope over a bent or noisy spectrum, "
            "not one exponent" + _model_free(p.table, sorted(bad)))


def _model_free(t: pd.DataFrame, layers: list[int]) -> str:
    """What the effective rank, which assumes no power law, says at ``layers`` (empty before trace format 5)."""
    if "d_erank" not in t or not np.isfinite(t["d_erank"].to_numpy(float)).any():
        return ""
    rows = t[t["layer"].isin(layers)]
    moved = rows[rows["p_erank_holm"].to_numpy(float) < LEVEL]
    if moved.empty:
        return "; the effective rank, which assumes no power law, changes beyond its noise at none of them"
    d = moved["d_erank"].to_numpy(float)
    return (f"; the effective rank, which assumes no power law, changes beyond its noise at {len(moved)} of them "
            f"(Δ {d.min():+.2f} to {d.max():+.2f}, Holm p < {LEVEL:g})")


def _field(p: PairComparison) -> str | None:
    """The field's measures in one sentence: CKA's lowest layer, the effective rank's and RankMe's changes."""
    t = p.table
    parts = []
    if "cka" in t and np.isfinite(t["cka"].to_numpy(float)).any():
        i = int(np.nanargmin(t["cka"].to_numpy(float)))
        r = t.iloc[i]
        parts.append(f"linear CKA with {p.ref} lowest at layer {int(r['layer'])}: {r['cka']:.3f} "
                     f"[{r['cka_lo']:.3f}, {r['cka_hi']:.3f}]")
    for name, what in (("erank", "effective rank"), ("rankme", "RankMe")):
        if f"d_{name}" in t and np.isfinite(t[f"d_{name}"].to_numpy(float)).any():
            n = int((t[f"p_{name}_holm"].to_numpy(float) < LEVEL).sum())
            parts.append(f"{what} changes at {n} of {len(t)} layers (Holm p < {LEVEL:g})")
    return "; ".join(parts) or None


def pair_verdict(p: PairComparison, ref: Trace | None, other: Trace | None, series_row: dict | None) -> Verdict:
    """One pair's verdict: where, how strongly, the signatures, then what the comparison also measured."""
    n = _numbers(p)
    where, spread = _where(n)
    sig, ramp = _signatures(n, spread)
    points = [("where", where), ("strength", _strength(n)), ("signatures", sig)]
    more = [("transport", f"L moves beyond the noise at {int(n.c_L.sum())} of {n.n_L} steps; onset "
                          f"{onset_text(p.summary.get('onset_a'), 'a')} (a), "
                          f"{onset_text(p.summary.get('onset_L'), 'L')} (L)")]
    for topic, txt in (("predictions", _predictions(n)), ("sequence", _sequence(p))):
        if txt is not None:
            points.append((topic, txt))
    if (output := _output(p, ref, other)) is not None:
        more.append(("output", output))
    if (field := _field(p)) is not None:
        more.append(("field's measures", field))
    flagged = bool(series_row and series_row.get("destabilized"))
    if series_row is not None:
        points.append(("stability", _stability(series_row)))
    head = ("changes throughout depth" if spread else "a late-layer α ramp" if ramp else
            "no late-layer α ramp" if n.c_a.any() else "no change in a beyond the noise")
    headline = (f"{head}; terminal Δa {n.gain_a:+.3f}, ΔL {n.gain_L:+.3f}"
                + (" — flagged destabilized" if flagged else ""))
    return Verdict(f"{p.other} vs {p.ref}", headline, tuple(points), tuple(more), _caveat(p, n, ref, other, ramp),
                   flagged)


def trace_verdict(tr: Trace) -> Verdict:
    """One checkpoint alone: its a and L across depth, and what its fits allow."""
    t = tr.table
    a = t["a"].to_numpy(float)
    ok = (t["status"].astype(object) == "ok").to_numpy()
    fin = np.isfinite(a)
    pts = []
    if fin.any():
        i, j = int(np.nanargmin(a)), int(np.nanargmax(a))
        pts.append(("contraction", f"a ranges from {a[i]:.3f} (layer {t['layer'].iloc[i]}) to {a[j]:.3f} "
                                   f"(layer {t['layer'].iloc[j]}); last layer {a[fin][-1]:.3f}"))
    L = t["L_mean"].to_numpy(float)
    if np.isfinite(L).any():
        k = int(np.nanargmax(L))
        pts.append(("transport", f"path length Σ L {np.nansum(L):.2f} rad; the largest step is "
                                 f"{t['layer'].iloc[k]}→{t['layer'].iloc[k] + 1} ({L[k]:.3f} rad)"))
    caveat = None
    if (~ok).any():
        caveat = (f"{int((~ok).sum())} of {len(a)} layers have a fit that is not ok: read a there as an average "
                  "slope, not one exponent")
    return Verdict(tr.label, f"{int(ok.sum())} of {len(a)} layers fit one power law", tuple(pts), (), caveat)


def verdicts(traces: list[Trace], comparison: Comparison | None) -> list[Verdict]:
    """Per pair when there is a comparison, else per checkpoint."""
    by_label = {tr.label: tr for tr in traces}
    if comparison is None or not comparison.pairs:
        return [trace_verdict(tr) for tr in traces]
    rows = {}
    if comparison.series is not None and not comparison.series.empty:
        rows = {r["label"]: r for r in comparison.series.to_dict(orient="records")}
    return [pair_verdict(p, by_label.get(p.ref), by_label.get(p.other), rows.get(p.other))
            for p in comparison.pairs]
