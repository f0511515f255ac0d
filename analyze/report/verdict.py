"""The report's verdict: a few sentences per checkpoint, each computed from the comparison's numbers.

Pure: traces and a comparison in, sentences out (no HTML, no I/O). One sentence each for where the
change concentrates, how strongly, whether the paper's two signatures appear, what the fits allow,
and the destabilization rule; every claim names the numbers it rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spinal.analyze.compare.aggregates import nanmean, steps_into
from spinal.analyze.compare.comparison import Comparison, PairComparison, counts
from spinal.analyze.compare.stability import largest_ratio
from spinal.analyze.trace import Trace
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


def pair_verdict(p: PairComparison, ref: Trace | None, other: Trace | None, series_row: dict | None) -> Verdict:
    t = p.table.reset_index(drop=True)
    layers = t["layer"].to_numpy(int)
    T = t["terminal"].to_numpy(bool)
    TL = steps_into(T)
    d_a, d_L = t["d_a"].to_numpy(float), t["d_L"].to_numpy(float)
    c_a, c_L = counts(t, "a"), counts(t, "L")
    n_a, n_L = int(np.isfinite(d_a).sum()), int(np.isfinite(d_L).sum())
    term = [int(x) for x in layers[T]]
    window = f"layers {term[0]}–{term[-1]}" if term else "the terminal window"
    uniform = T.sum() / max(n_a, 1)
    share = float(p.summary.get("terminal_share_a") or math.nan)
    gain_a, gain_L = nanmean(d_a[T]), nanmean(d_L[TL])
    null_a, null_L = nanmean(t["null_a"].to_numpy(float)[T]), nanmean(t["null_L"].to_numpy(float)[TL])
    peak = int(np.nanargmax(np.abs(d_a))) if np.isfinite(d_a).any() else None

    # where
    if not c_a.any():
        where = (f"a moves beyond the split-half noise at no layer (largest |Δa| {abs(d_a[peak]):.3f} at layer "
                 f"{layers[peak]})" if peak is not None else "no layer has a fitted a in both checkpoints")
        spread = False
    else:
        spread = c_a.sum() >= SPREAD * n_a and not (share > 1.5 * uniform)
        moved = ranges([int(x) for x in layers[c_a]])
        if spread:
            where = (f"a changes throughout depth, at {c_a.sum()} of {n_a} layers beyond the noise, not only late; "
                     f"the terminal window holds {share:.0%} of |Δa| ({uniform:.0%} if uniform)")
        elif share > uniform:
            where = (f"the change in a concentrates late: {window} hold {share:.0%} of |Δa| ({uniform:.0%} if "
                     f"uniform); a moves beyond the noise at layers {moved}")
        else:
            where = (f"the change in a is not concentrated late: {window} hold {share:.0%} of |Δa| "
                     f"({uniform:.0%} if uniform); a moves beyond the noise at layers {moved}")
    # how strongly
    times = lambda g, n: f" ({abs(g) / n:.1f}× the noise)" if n > 0 and math.isfinite(g) else ""  # noqa: E731
    strength = (f"terminal mean Δa {gain_a:+.3f}{times(gain_a, null_a)}, ΔL {gain_L:+.3f} rad{times(gain_L, null_L)}")
    if peak is not None:
        strength += (f"; largest Δa {d_a[peak]:+.3f} [{t['d_a_lo'].iloc[peak]:+.3f}, {t['d_a_hi'].iloc[peak]:+.3f}] "
                     f"at layer {layers[peak]}")
    # the paper's signatures: each needs the terminal mean beyond the noise, a terminal layer (step) that counts
    # in the same direction, and, for the ramp, a change concentrated late rather than everywhere
    late_a = bool((c_a & T & (d_a > 0)).any())
    why_not_ramp = ("terminal Δa is not positive" if not gain_a > 0 else
                    f"terminal mean Δa {gain_a:+.3f} is within the noise ±{null_a:.3f}" if not gain_a > null_a else
                    "a moves at every depth, not only late" if spread else
                    "the terminal window holds no more than its uniform share of |Δa|" if not share > uniform else
                    "no terminal layer beyond the noise" if not late_a else None)
    late_L = bool((c_L & TL & (d_L < 0)).any())
    why_not_drop = (f"terminal ΔL {gain_L:+.3f}: adjacent readouts move more" if gain_L > 0 else
                    "terminal ΔL is not negative" if not gain_L < 0 else
                    f"terminal mean ΔL {gain_L:+.3f} is within the noise ±{null_L:.3f}" if not -gain_L > null_L else
                    "no terminal step beyond the noise" if not late_L else None)
    ramp, drop = why_not_ramp is None, why_not_drop is None
    sig = ("late-layer α ramp: " + ("yes" if ramp else f"no ({why_not_ramp})")
           + "; smaller L in the terminal window: " + ("yes" if drop else f"no ({why_not_drop})"))
    points = [("where", where), ("strength", strength), ("signatures", sig)]
    more = []
    steps_moved = int(c_L.sum())
    more.append(("transport", f"L moves beyond the noise at {steps_moved} of {n_L} steps; onset "
                                f"{onset_text(p.summary.get('onset_a'), 'a')} (a), "
                                f"{onset_text(p.summary.get('onset_L'), 'L')} (L)"))
    if "fr_total" in t.columns and np.isfinite(t["fr_total"].to_numpy(float)).any():
        last = int(np.flatnonzero(np.isfinite(t["fr_total"].to_numpy(float)))[-1])
        points.append(("predictions", f"on the same tokens, the lens predictions at layer {layers[last]} differ by "
                                      f"Fisher–Rao {t['fr_total'].iloc[last]:.3f} rad (the representation moved "
                                      f"{t['fr_representation'].iloc[last]:.3f}, the readout "
                                      f"{t['fr_readout'].iloc[last]:.3f})"))
    shifted = p.summary.get("shifted_share")
    if isinstance(shifted, (int, float)) and math.isfinite(shifted):
        early = p.summary.get("shift_early_share")
        points.append(("sequence", f"the top token leaves {p.ref}'s top 3 at {shifted:.1%} "
                                   f"[{p.summary.get('shifted_share_lo', math.nan):.1%}, "
                                   f"{p.summary.get('shifted_share_hi', math.nan):.1%}] of reply positions"
                                   + (f", {early:.0%} of them in the first 8" if isinstance(early, float)
                                      and math.isfinite(early) else "")
                                   + f"; mean final KL {p.summary.get('kl_final_mean', math.nan):.3f} nats"))
    if ref is not None and other is not None and "entropy" in other.table:
        e_ref, e_oth = float(ref.table["entropy"].iloc[-1]), float(other.table["entropy"].iloc[-1])
        pl_ref, pl_oth = ref.meta.get("path_length"), other.meta.get("path_length")
        if math.isfinite(e_ref) and math.isfinite(e_oth):
            txt = f"final-layer entropy {e_oth:.2f} nats ({p.ref}: {e_ref:.2f})"
            if isinstance(pl_ref, (int, float)) and isinstance(pl_oth, (int, float)):
                txt += f"; path length Σ L {pl_oth:.2f} ({p.ref}: {pl_ref:.2f})"
            more.append(("output", txt))
    flagged = bool(series_row and series_row.get("destabilized"))
    if series_row is not None:
        reason = series_row.get("reason") or ""
        if flagged:
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
        points.append(("stability", txt))
    # fit caveat: the layers the headline rests on
    rest = [int(x) for x in layers[c_a & T]] if ramp else [int(x) for x in layers[c_a]]  # nothing counts: no caveat
    caveat = None
    if ref is not None and other is not None and rest:
        in_ref, in_other = _status(ref, rest), _status(other, rest)  # layer -> a status that is not ok
        bad = {**in_ref, **in_other}
        if bad:
            kinds = " or ".join(sorted(set(in_ref.values()) | set(in_other.values())))
            which = ("the layer" if len(rest) == 1 else "all the layers" if len(bad) == len(rest) else
                     f"{len(bad)} of the {len(rest)} layers")
            caveat = (f"{which} this rests on ({'layer' if len(bad) == 1 else 'layers'} {ranges(list(bad))}) fit "
                      f"{kinds} in {p.ref} or {p.other}: a there is an average slope over a bent or noisy spectrum, "
                      "not one exponent")
    head = ("changes throughout depth" if spread else "a late-layer α ramp" if ramp else
            "no late-layer α ramp" if c_a.any() else "no change in a beyond the noise")
    headline = f"{head}; terminal Δa {gain_a:+.3f}, ΔL {gain_L:+.3f}" + (" — flagged destabilized" if flagged else "")
    return Verdict(f"{p.other} vs {p.ref}", headline, tuple(points), tuple(more), caveat, flagged)


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
