"""When a training run destabilizes: each checkpoint's step from the one before, against the run's healthy steps.

A series of checkpoints of one run, in training order, is read as a walk through trace space. Each save moves
the depth profile of a and of L by some amount (its *step*). While DPO trains normally the steps shrink or hold
(the loss saturates); when the run breaks, the step jumps. The rule (issue 16, validated on the known answers
in docs/results/destabilization.md): a checkpoint is flagged when one of its steps is more than ``factor`` times the
median of the same step over the earlier checkpoints that were not flagged (the run's own healthy steps), and
beyond ``z`` of its own standard errors (so a stalled run's noise does not count as a jump).

Components, each from the traces alone (paired on the identical token stream):
- ``a``: RMS over layers of a(t) − a(t−1); noise: RMS of the paired bootstrap SE per layer (same blocks drawn).
- ``L``: RMS over steps ℓ→ℓ+1 of L_mean(t) − L_mean(t−1) (the traces' token-weighted means); noise: RMS of the
  per-step SE of the paired per-sequence means (each sequence weighted equally, as in compare's ΔL).
- ``path``: |Σ L(t) − Σ L(t−1)|; noise: SE over sequences of each sequence's own path-length difference.
Where a trace has no replicates or per-sequence L, the noise is unknown: the ratio alone decides, and the reason
says so.

Saves are taken as evenly spaced: the rule is per save, so a save after a much longer gap can look like a jump.
The docs/method.md §4 wording (the terminal gain reverses, terminal L rises again, coherence drops) is computed
beside it (``method_rule``) for comparison; on the known answers it flags healthy steps and misses the family's collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spinal.analyze.compare.aggregates import coherence, coherence_null, nanmean, steps_into
from spinal.analyze.trace_format import Trace

FACTOR = 4.0  # default: a step more than 4x the run's typical healthy step
NOISE_Z = 3.0  # and beyond 3 standard errors of its own
COMPONENTS = {"a": "a profile", "L": "L profile", "path": "path length"}


@dataclass(frozen=True)
class Step:
    """How far one checkpoint moved from the one before it: per component, the size and its standard error."""

    size: dict[str, float]
    noise: dict[str, float]


def _rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x ** 2))) if x.size else math.nan


def step(prev: Trace, cur: Trace) -> Step:
    """The step from ``prev`` to ``cur`` (consecutive checkpoints of one run, same tokens and bootstrap design)."""
    d_a = cur.table["a"].to_numpy(float) - prev.table["a"].to_numpy(float)
    rep = prev.paired_boot(cur)  # (layer, n_boot), paired: replicate b drew the same blocks in both
    g = int(cur.meta.get("blocks_used") or 0)
    if rep.shape[1] > 1 and g > 1:
        se_a = math.sqrt(g / (g - 1)) * np.nanstd(rep, axis=1, ddof=1)
        noise_a = _rms(np.where(np.isfinite(d_a), se_a, np.nan))
    else:
        noise_a = math.nan
    L0, L1 = prev.table["L_mean"].to_numpy(float)[:-1], cur.table["L_mean"].to_numpy(float)[:-1]
    d_seq = cur.seq_L - prev.seq_L  # (sequence, step) paired by sequence
    d_seq = d_seq[np.isfinite(d_seq).all(axis=1)]
    n = d_seq.shape[0]
    noise_L = _rms(d_seq.std(axis=0, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    noise_path = float(d_seq.sum(axis=1).std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    ok = np.isfinite(L0) & np.isfinite(L1)
    return Step(size={"a": _rms(d_a), "L": _rms(L1 - L0), "path": abs(float(np.sum(L1[ok]) - np.sum(L0[ok])))},
                noise={"a": noise_a, "L": noise_L, "path": noise_path})


def judge(steps: list[Step], factor: float = FACTOR, z: float = NOISE_Z) -> list[dict]:
    """One row per step (the checkpoint it arrives at): size, noise and ratio to the typical healthy step per
    component, ``destabilized`` and its ``reason``. The first step has no history and is never flagged."""
    rows: list[dict] = []
    for i, s in enumerate(steps):
        healthy = [steps[j] for j in range(i) if not rows[j]["destabilized"]]
        row: dict = {}
        why = []
        for c, name in COMPONENTS.items():
            size, noise = s.size[c], s.noise[c]
            hist = [h.size[c] for h in healthy if math.isfinite(h.size[c])]
            typical = float(np.median(hist)) if hist else math.nan
            ratio = (size / typical if typical > 0 else (math.inf if size > 0 else math.nan)) if hist else math.nan
            beyond_noise = not (math.isfinite(noise) and size <= z * noise)
            row |= {f"step_{c}": size, f"step_{c}_se": noise, f"step_{c}_ratio": ratio}
            if math.isfinite(size) and ratio > factor and beyond_noise:  # NaN and inf compare as they should
                why.append(f"{name} step {size:.3g} is {ratio:.1f}x the run's typical healthy step {typical:.3g} "
                           f"(threshold {factor:g}x)" + ("" if math.isfinite(noise) else
                                                         "; no standard error, the ratio alone decides"))
        row["destabilized"] = bool(why)
        row["reason"] = "; ".join(why) if why else ("" if i else "first step: no earlier step to compare with")
        rows.append(row)
    return rows


def training_series(traces: list[Trace], pairs, term, factor: float = FACTOR) -> tuple[pd.DataFrame, str | None]:
    """One row per checkpoint in training order (the reference first): terminal gains against the reference,
    the steps and the destabilization flag (``judge``), and the docs/method.md §4 wording beside it; plus the ramp
    onset (the first checkpoint whose terminal a gain exceeds the null spread)."""
    rows = [{"label": traces[0].label, "terminal_a_gain": 0.0, "terminal_L_change": 0.0,
             "coherence": coherence(traces[0], term)}]
    for p in pairs:
        T = p.table["terminal"].to_numpy()
        rows.append({"label": p.other, "terminal_a_gain": nanmean(p.table["d_a"].to_numpy()[T]),
                     "terminal_L_change": nanmean(p.table["d_L"].to_numpy()[steps_into(T)]),
                     "coherence": p.summary["coherence_other"]})
    judged = judge([step(a, b) for a, b in zip(traces[:-1], traces[1:])], factor)
    rows[0] |= {k: (False if k == "destabilized" else "" if k == "reason" else math.nan) for k in judged[0]}
    for r, j in zip(rows[1:], judged):
        r |= j
    T0 = pairs[0].table["terminal"].to_numpy()
    null_a = nanmean(pairs[0].table["null_a"].to_numpy()[T0])
    null_L = nanmean(pairs[0].table["null_L"].to_numpy()[steps_into(T0)])
    _method_rule(rows, null_a, null_L, coherence_null(traces[0], term))
    ramp = [r["label"] for r in rows[1:] if r["terminal_a_gain"] > null_a]
    return pd.DataFrame(rows), (ramp[0] if ramp else None)


def _method_rule(rows: list[dict], null_a: float, null_L: float, null_coh: float) -> None:
    """docs/method.md §4's wording, kept for comparison (``method_rule``, ``method_reason``): against the best value
    of the earlier checkpoints after the reference, the terminal a gain falls, the terminal ΔL rises, or
    coherence drops, each by more than its null spread. The first checkpoint after the reference cannot reverse."""
    if not math.isfinite(null_coh) or null_coh <= 0:
        null_coh = 0.1 * rows[0]["coherence"]  # no bootstrap: a 10% drop stands in for the null spread
    for r in rows[:2]:
        r["method_rule"], r["method_reason"] = False, ""
    if len(rows) < 2:
        return
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
        r["method_rule"], r["method_reason"] = bool(why), "; ".join(why)
        best_a, best_L = max(best_a, r["terminal_a_gain"]), min(best_L, r["terminal_L_change"])
        best_coh = max(best_coh, r["coherence"]) if math.isfinite(r["coherence"]) else best_coh


def jumped(row: dict) -> list[str]:
    """The components whose step flagged this series row (those its reason names)."""
    reason = row.get("reason") if isinstance(row.get("reason"), str) else ""
    return [c for c, name in COMPONENTS.items() if f"{name} step" in reason]


def largest_ratio(row: dict) -> float | None:
    """The row's largest finite step ratio, or None (the first step, or a comparison without steps)."""
    ratios = [row.get(f"step_{c}_ratio") for c in COMPONENTS]
    ratios = [float(r) for r in ratios if isinstance(r, (int, float)) and math.isfinite(r)]
    return max(ratios) if ratios else None


def flag_text(row: dict, factor: float = FACTOR) -> str:
    """A short reading of one series row for tables: 'yes: a 95.7×, path 14.7× the typical healthy step'."""
    reason = row.get("reason") if isinstance(row.get("reason"), str) else ""
    if reason.startswith("first step"):
        return "– (first step)"
    over = [f"{c} {row[f'step_{c}_ratio']:.1f}×" for c in jumped(row)]
    return f"yes: {', '.join(over)} the typical healthy step" if row.get("destabilized") else "no"
