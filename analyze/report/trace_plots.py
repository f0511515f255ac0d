"""Figures of depth traces, one line or curve per checkpoint: a and L across depth, the (L, a) trajectory, and
one layer's spectra."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from spinal.analyze.report.figures import A_NAME, colors, fit_line, fit_ok, save, step_x, text
from spinal.analyze.trace_format import Trace
from spinal.errors import InputError


def draw_depth(traces: Sequence[Trace]) -> Figure:
    """a_ℓ with its bootstrap CI band and mean L_ℓ with its q25–q75 band, one line per checkpoint."""
    fig = Figure(figsize=(10, 7.6), layout="constrained")
    ax_a, ax_l = fig.subplots(2, 1, sharex=True)
    any_bad = any_nan = False
    for tr, c in zip(traces, colors(len(traces))):
        t = tr.table
        x = t["layer"].to_numpy(float)
        a = t["a"].to_numpy(float)
        ok = fit_ok(t)
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
    return fig


def plot_depth(traces: Sequence[Trace], path: str | Path) -> Path:
    """a_ℓ with its bootstrap CI band and mean L_ℓ with its q25–q75 band, one line per checkpoint (see draw_depth), saved as a PNG."""
    return save(draw_depth(traces), path)


def outlier_first(L: np.ndarray, factor: float = 2.5) -> bool:
    """True when the first step (embeddings → block 1) is larger than ``factor``× the largest of the rest: it
    would squash every other step of a trajectory plot into a sliver."""
    L = np.asarray(L, dtype=float)
    rest = L[1:][np.isfinite(L[1:])]
    return bool(L.size > 2 and np.isfinite(L[0]) and rest.size and L[0] > factor * rest.max())


def draw_curve(traces: Sequence[Trace]) -> Figure:
    """Each checkpoint's depth trajectory in the (L, a) plane, points coloured by layer, arrows pointing deeper.

    Layer 0 is left out when its step to block 1 dwarfs the others (the embeddings' readout is far from every
    block's); the figure says so and gives its values. Only the reference's first and last points are labelled
    (the colour bar gives every layer): labels per checkpoint overlap where the curves run together."""
    fig = Figure(figsize=(9, 6.6), layout="constrained")
    ax = fig.subplots()
    handles, sc = [], None
    all_layers = np.concatenate([t.table["layer"].to_numpy(float) for t in traces]) if traces else np.zeros(1)
    vmin, vmax = float(np.nanmin(all_layers)), float(np.nanmax(all_layers))
    drop_first = bool(traces) and all(outlier_first(t.table["L_mean"].to_numpy(float)) for t in traces)
    for i, (tr, c) in enumerate(zip(traces, colors(len(traces)))):
        t = tr.table
        keep = np.isfinite(t["L_mean"].to_numpy(float)) & np.isfinite(t["a"].to_numpy(float))
        if drop_first:
            keep[0] = False
        L, a, lay = (t[k].to_numpy(float)[keep] for k in ("L_mean", "a", "layer"))
        for j in range(len(L) - 1):
            ax.annotate("", xy=(L[j + 1], a[j + 1]), xytext=(L[j], a[j]),
                        arrowprops=dict(arrowstyle="-|>", color=c, lw=1.3, alpha=0.8, shrinkA=4, shrinkB=4,
                                        mutation_scale=11))
        sc = ax.scatter(L, a, c=lay, cmap="viridis", vmin=vmin, vmax=vmax, s=46, edgecolors=[c], linewidths=1.6,
                        zorder=3)
        if i == 0 and len(L):
            for j, off in ((0, (8, -12)), (len(L) - 1, (8, 6))):
                ax.annotate(f"ℓ={lay[j]:.0f}", (L[j], a[j]), xytext=off, textcoords="offset points", fontsize=8,
                            color=c)
        handles.append(Line2D([], [], color=c, marker="o", mfc="white", lw=1.3, label=text(tr.label)))
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="layer ℓ (depth)")
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title(f"Depth trajectory: {A_NAME} against the Fisher–Rao step L", fontsize=11)
    xlabel = "mean Fisher–Rao step L_ℓ to the next layer (radians, 0…π)"
    if drop_first:
        first = ", ".join(f"{float(t.table['L_mean'].iloc[0]):.2f}" for t in traces)
        xlabel += f"\nlayer 0 not drawn: its step to block 1 is far larger (L_0 = {first} rad)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{A_NAME} at layer ℓ")
    ax.grid(alpha=0.3)
    return fig


def plot_curve(traces: Sequence[Trace], path: str | Path) -> Path:
    """The (L, a) depth trajectory of each checkpoint (see draw_curve), saved as a PNG."""
    return save(draw_curve(traces), path)


def draw_spectra(traces: Sequence[Trace], layer: int) -> Figure:
    """Every checkpoint's singular values at one layer on one log-log panel, each scaled by its own σ_1 so the
    shapes compare, with its fitted slope over its fit window (legend: a, CI and fit status)."""
    fig = Figure(figsize=(9, 5.6), layout="constrained")
    ax = fig.subplots()
    drawn = 0
    for tr, c in zip(traces, colors(len(traces))):
        rows = tr.table[tr.table["layer"] == layer]
        if layer not in tr.spectra or rows.empty:
            continue
        row = rows.iloc[0]
        sv = np.asarray(tr.spectra[layer], dtype=np.float64)
        if not (sv.size and sv[0] > 0):
            continue
        k = np.arange(1, sv.size + 1)
        pos = sv > 0
        ax.loglog(k[pos], sv[pos] / sv[0], "-", color=c, lw=1.3, alpha=0.85)
        a, k_lo, k_hi = (float(row[col]) for col in ("a", "k_lo", "k_hi"))
        spikes = int(row["spikes"]) if np.isfinite(row["spikes"]) else 0
        label = f"{text(tr.label)}: " + (f"a = {a:.3f}" if math.isfinite(a) else "no fit") + f" ({row['status']})"
        if all(math.isfinite(v) for v in (a, k_lo, k_hi)) and 1 <= k_lo < k_hi <= sv.size:
            kk, fitted = fit_line(sv, a, int(k_lo), int(k_hi), spikes)
            ax.loglog(kk, fitted / sv[0], "--", color=c, lw=2.2)
        ax.plot([], [], "-", color=c, lw=2, label=label)
        drawn += 1
    if not drawn:
        raise InputError(f"no trace holds a spectrum for layer {layer}")
    ax.plot([], [], "--", color="grey", lw=2.2, label="dashed: fitted slope −a over the fit window")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Layer {layer}: singular values of the centered hidden states, each over its own σ_1",
                 fontsize=11)
    ax.set_xlabel("rank k (1 = largest singular value)")
    ax.set_ylabel("σ_k / σ_1")
    ax.grid(alpha=0.3, which="major")
    return fig


def plot_spectra(traces: Sequence[Trace], layer: int, path: str | Path) -> Path:
    """One layer's spectra of every checkpoint (see draw_spectra), saved as a PNG."""
    return save(draw_spectra(traces, layer), path)

