"""Figures of depth traces and their comparisons, drawn on standalone matplotlib Figures (no pyplot state) into PNGs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from spinal.analyze.comparison import Comparison
from spinal.analyze.trace import Trace
from spinal.errors import InputError

DPI = 100  # ~1000 px wide figures: readable in the report and in a PR thumbnail
A_NAME = "rank-decay exponent a (σ_k ∝ k^-a)"
L_NAME = "Fisher–Rao step L (radians, 0…π)"
SIG = 0.05  # Holm family-wise level, the same as compare.LEVEL's two-sided 95%
TERMINAL_COLOR = "#f4a340"
BAD_COLOR = "#c0392b"


def colors(n: int) -> list:
    """One colour per checkpoint (tab10 order, cycled), shared by every figure and the report."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def text(s) -> str:
    """User text (labels) drawn literally: an even number of '$' would otherwise switch matplotlib to mathtext."""
    return str(s).replace("$", r"\$")


def step_x(layers: np.ndarray) -> np.ndarray:
    """x position of the step ℓ→next layer: midway between the two layers (NaN for the last layer)."""
    layers = np.asarray(layers, dtype=float)
    return np.append((layers[:-1] + layers[1:]) / 2, np.nan)


def fit_line(sv: np.ndarray, a: float, k_lo: int, k_hi: int, spikes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law over the window: σ̂_k = C·(k − spikes)^-a, C the weighted (1/k) LS intercept.

    Matches spectrum.fit_wls, which regresses log σ_k on log(k − spikes) with weights 1/(k − spikes).
    """
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    bulk = k - spikes  # (k,) bulk ranks, 1-based
    y = np.log(np.asarray(sv, dtype=np.float64)[k_lo - 1 : k_hi])
    w = 1.0 / bulk
    log_c = float(np.sum(w * (y + a * np.log(bulk))) / np.sum(w))
    return k, np.exp(log_c - a * np.log(bulk))


def _ok(table: pd.DataFrame) -> np.ndarray:
    """True where the fit status is 'ok' (a missing status counts as not ok)."""
    return (table["status"].astype(object) == "ok").to_numpy()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_depth(traces: Sequence[Trace], path: str | Path) -> Path:
    """a_ℓ with its bootstrap CI band and mean L_ℓ with its q25–q75 band, one line per checkpoint."""
    fig = Figure(figsize=(10, 7.6), layout="constrained")
    ax_a, ax_l = fig.subplots(2, 1, sharex=True)
    any_bad = any_nan = False
    for tr, c in zip(traces, colors(len(traces))):
        t = tr.table
        x = t["layer"].to_numpy(float)
        a = t["a"].to_numpy(float)
        ok = _ok(t)
        ax_a.fill_between(x, t["a_lo"].to_numpy(float), t["a_hi"].to_numpy(float), color=c, alpha=0.15, lw=0)
        ax_a.plot(x, a, "-", color=c, lw=1.6, label=text(tr.label))
        ax_a.plot(x[ok], a[ok], "o", color=c, ms=5)
        bad = ~ok & np.isfinite(a)
        ax_a.plot(x[bad], a[bad], "o", mfc="white", mec=c, mew=1.6, ms=7)
        gone = ~np.isfinite(a)
        ax_a.plot(x[gone], np.full(gone.sum(), 0.03), "x", color=c, ms=8, mew=2,
                  transform=ax_a.get_xaxis_transform())
        any_bad |= bool(bad.any())
        any_nan |= bool(gone.any())
        xs = step_x(x)
        ax_l.fill_between(xs, t["L_q25"].to_numpy(float), t["L_q75"].to_numpy(float), color=c, alpha=0.09, lw=0)
        ax_l.plot(xs, t["L_mean"].to_numpy(float), "o-", color=c, lw=1.6, ms=4)
    handles, _ = ax_a.get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=0.3, label="band: 95% bootstrap CI of a"))
    if any_bad:
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="k", label="hollow: fit status not 'ok'"))
    if any_nan:
        handles.append(Line2D([], [], ls="", marker="x", color="k", mew=2, label="×: no fit (too few ranks)"))
    ax_a.legend(handles=handles, fontsize=8, loc="best", ncol=2)
    ax_a.set_title(f"Contraction: {A_NAME} per layer")
    ax_a.set_ylabel("a_ℓ  (higher = faster tail decay)")
    ax_l.set_title("Transport: mean Fisher–Rao step L_ℓ between adjacent layers (logit lens)")
    ax_l.set_ylabel("L_ℓ (radians); band: q25–q75 over tokens")
    ax_l.set_xlabel("layer ℓ (0 = embeddings); L_ℓ, the step ℓ→ℓ+1, is drawn between the two layers")
    for ax in (ax_a, ax_l):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def _shade_terminal(ax, table: pd.DataFrame, steps: bool) -> bool:
    """Shade the terminal window T; for L the steps arriving in T (ℓ−1→ℓ, ℓ ∈ T) span [min T − 1, max T]."""
    layers = table["layer"].to_numpy(float)
    term = layers[table["terminal"].astype(bool).to_numpy()]
    if term.size:
        prev = layers[max(int(np.searchsorted(layers, term.min())) - 1, 0)]
        lo, hi = (prev, term.max()) if steps else (term.min() - 0.5, term.max() + 0.5)
        ax.axvspan(lo, hi, color=TERMINAL_COLOR, alpha=0.15, lw=0)
    return bool(term.size)


def plot_deltas(comparison: Comparison, path: str | Path) -> Path:
    """Δa_ℓ and ΔL_ℓ per pair: paired 95% CIs, ± null band, Holm-significant layers, terminal window shaded."""
    if not comparison.pairs:
        raise InputError("the comparison holds no pairs: nothing to plot; compare at least two traces")
    fig = Figure(figsize=(10, 7.6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    n = len(comparison.pairs)
    cs = colors(n + 1)[1:]  # the reference keeps colour 0, as in plot_depth
    spec = [("a", "Δa_ℓ", f"Δ {A_NAME}, other − ref"),
            ("L", "ΔL_ℓ (radians)", "Δ mean Fisher–Rao step L_ℓ (step ℓ→ℓ+1), other − ref")]
    terminal = _shade_terminal(axes[0], comparison.pairs[0].table, steps=False)
    _shade_terminal(axes[1], comparison.pairs[0].table, steps=True)
    any_sig = False
    for ax, (q, ylabel, title) in zip(axes, spec):
        done_refs = set()
        for i, (p, c) in enumerate(zip(comparison.pairs, cs)):
            t = p.table
            layers = t["layer"].to_numpy(float)
            x0 = layers if q == "a" else step_x(layers)
            if p.ref not in done_refs:  # the null spread belongs to the reference checkpoint
                null = t[f"null_{q}"].to_numpy(float)
                ax.fill_between(x0, -null, null, color="grey", alpha=0.22, lw=0)
                done_refs.add(p.ref)
            x = x0 + (i - (n - 1) / 2) * min(0.12, 0.6 / n)
            d = t[f"d_{q}"].to_numpy(float)
            err = np.vstack([d - t[f"d_{q}_lo"].to_numpy(float), t[f"d_{q}_hi"].to_numpy(float) - d])
            ax.errorbar(x, d, yerr=err, fmt="o", color=c, ms=4, capsize=2.5, lw=1.2,
                        label=text(f"{p.other} − {p.ref}") if q == "a" else None)
            sig = (t[f"p_{q}_holm"].to_numpy(float) < SIG) & np.isfinite(d)
            ax.plot(x[sig], d[sig], "*", color=c, mec="k", mew=0.6, ms=13, zorder=5)
            any_sig |= bool(sig.any())
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].set_xlabel("layer ℓ (ΔL_ℓ is drawn between layers ℓ and ℓ+1); bars: paired 95% bootstrap CI")
    handles, _ = axes[0].get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=0.35, label="± null spread (split-half of ref)"))
    if terminal:
        handles.append(Patch(color=TERMINAL_COLOR, alpha=0.3, label="terminal window"))
    if any_sig:
        handles.append(Line2D([], [], ls="", marker="*", color="w", mec="k", ms=12, label=f"Holm p < {SIG}"))
    axes[0].legend(handles=handles, fontsize=8, loc="best", ncol=2)
    return _save(fig, path)


def plot_curve(traces: Sequence[Trace], path: str | Path) -> Path:
    """Each checkpoint's depth trajectory in the (L, a) plane, points coloured by layer, arrows pointing deeper."""
    fig = Figure(figsize=(9, 6.6), layout="constrained")
    ax = fig.subplots()
    handles, sc = [], None
    all_layers = np.concatenate([t.table["layer"].to_numpy(float) for t in traces]) if traces else np.zeros(1)
    vmin, vmax = float(np.nanmin(all_layers)), float(np.nanmax(all_layers))
    for tr, c in zip(traces, colors(len(traces))):
        t = tr.table
        keep = np.isfinite(t["L_mean"].to_numpy(float)) & np.isfinite(t["a"].to_numpy(float))
        L, a, lay = (t[k].to_numpy(float)[keep] for k in ("L_mean", "a", "layer"))
        for j in range(len(L) - 1):
            ax.annotate("", xy=(L[j + 1], a[j + 1]), xytext=(L[j], a[j]),
                        arrowprops=dict(arrowstyle="-|>", color=c, lw=1.3, alpha=0.8, shrinkA=4, shrinkB=4,
                                        mutation_scale=11))
        sc = ax.scatter(L, a, c=lay, cmap="viridis", vmin=vmin, vmax=vmax, s=46, edgecolors=[c], linewidths=1.6,
                        zorder=3)
        ends = [len(L) - 1] if len(L) else []
        if len(L) and not handles:  # checkpoints start close together: label the first one's start only
            ends.insert(0, 0)
        for j in ends:
            ax.annotate(f"ℓ={lay[j]:.0f}", (L[j], a[j]), xytext=(6, 4), textcoords="offset points",
                        fontsize=8, color=c)
        handles.append(Line2D([], [], color=c, marker="o", mfc="white", lw=1.3, label=text(tr.label)))
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="layer ℓ (depth)")
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(f"Depth trajectory: {A_NAME} against the Fisher–Rao step L")
    ax.set_xlabel("mean Fisher–Rao step L_ℓ to the next layer (radians, 0…π)")
    ax.set_ylabel(f"{A_NAME} at layer ℓ")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_spectrum(trace: Trace, layer: int, path: str | Path) -> Path:
    """Log-log σ_k against k for one layer with the fit window shaded, the fitted slope −a and the spikes marked."""
    if layer not in trace.spectra:
        raise InputError(f"trace {trace.label!r} holds no spectrum for layer {layer}; "
                         f"it has layers {sorted(trace.spectra)}")
    sv = np.asarray(trace.spectra[layer], dtype=np.float64)
    rows = trace.table[trace.table["layer"] == layer]
    if rows.empty:
        raise InputError(f"trace {trace.label!r} has no table row for layer {layer}")
    row = rows.iloc[0]
    fig = Figure(figsize=(7.5, 5.2))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.89)  # fixed margins: 8 of these per report
    ax = fig.subplots()
    pos = sv > 0
    k = np.arange(1, sv.size + 1)
    ax.loglog(k[pos], sv[pos], ".", color="#1f77b4", ms=3.5, label="σ_k (centered)")
    spikes = int(row["spikes"]) if np.isfinite(row["spikes"]) else 0
    if spikes:
        ax.loglog(k[:spikes], sv[:spikes], "o", mfc="none", mec=BAD_COLOR, ms=10, mew=1.8,
                  label=f"{spikes} spike(s), excluded (top-1 share {row['top1_share']:.2f})")
    a, k_lo, k_hi = (float(row[c]) for c in ("a", "k_lo", "k_hi"))
    if all(math.isfinite(v) for v in (a, k_lo, k_hi)) and 1 <= k_lo < k_hi <= sv.size:
        ax.axvspan(k_lo, k_hi, color="#2ca02c", alpha=0.12, lw=0, label=f"fit window k = {k_lo:.0f}…{k_hi:.0f}")
        kk, fitted = fit_line(sv, a, int(k_lo), int(k_hi), spikes)
        ci = f" [{row['a_lo']:.3f}, {row['a_hi']:.3f}]" if math.isfinite(row["a_lo"]) else ""
        ax.loglog(kk, fitted, "-", color=BAD_COLOR, lw=2.2,
                  label=f"fit: slope −a, a = {a:.3f}{ci}, R² = {row['r2']:.3f}")
    fr = float(row["floor_rank"])
    if math.isfinite(fr) and 1 <= fr <= sv.size:
        ax.axvline(fr, color="grey", ls=":", lw=1.2, label=f"storage noise-floor rank {fr:.0f}")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{text(trace.label)} · layer {layer} · status {row['status']}\n"
                 f"singular values; {A_NAME}", fontsize=10)
    ax.set_xlabel("rank k (1 = largest singular value)")
    ax.set_ylabel("singular value σ_k of centered H_ℓ")
    ax.grid(alpha=0.3, which="major")
    return _save(fig, path)


def plot_series(comparison: Comparison, path: str | Path) -> Path:
    """Terminal a gain, terminal L change and coherence per checkpoint in training order, destabilized ones flagged."""
    s = comparison.series
    if s is None or s.empty:
        raise InputError("the comparison has no checkpoint series; compare ≥ 3 checkpoints with --series")
    fig = Figure(figsize=(10, 7.6), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    x = np.arange(len(s))
    bad = np.array([bool(v) if pd.notna(v) else False for v in s["destabilized"]])
    spec = [("terminal_a_gain", "Δa over terminal window", f"Terminal gain of the {A_NAME}"),
            ("terminal_L_change", "ΔL (radians)", "Terminal change of the mean Fisher–Rao step L"),
            ("coherence", "coherence (0…1]", "Trajectory coherence 1 / (1 + mean terminal curvature)")]
    for ax, (col, ylabel, title) in zip(axes, spec):
        y = s[col].to_numpy(float)
        ax.plot(x, y, "o-", color="#1f77b4", lw=1.6, ms=5)
        ax.plot(x[bad], y[bad], "X", color=BAD_COLOR, ms=12, mec="k", mew=0.6, zorder=5)
        for xi in x[bad]:
            ax.axvspan(xi - 0.4, xi + 0.4, color=BAD_COLOR, alpha=0.08, lw=0)
        if col != "coherence":
            ax.axhline(0, color="k", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[Line2D([], [], ls="", marker="X", color=BAD_COLOR, mec="k", ms=10,
                                   label="destabilized (see the series table for the reason)")], fontsize=8)
    axes[-1].set_xticks(x, [text(v) for v in s["label"]], rotation=20, ha="right")
    axes[-1].set_xlabel("checkpoint, in training order")
    return _save(fig, path)
