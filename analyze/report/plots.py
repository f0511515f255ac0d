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

from spinal.analyze.compare.comparison import LEVEL, Comparison, counts
from spinal.analyze.trace import Trace
from spinal.errors import InputError

DPI = 100  # ~1000 px wide figures: readable in the report and in a PR thumbnail
A_NAME = "rank-decay exponent a (σ_k ∝ k^-a)"
L_NAME = "Fisher–Rao step L (radians, 0…π)"
SIG = LEVEL  # Holm family-wise level
TERMINAL_COLOR = "#f4a340"
BAD_COLOR = "#c0392b"
MIN_BIN_TOKENS = 10  # position bins with fewer tokens are left out of the position figure


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


def draw_depth(traces: Sequence[Trace]) -> Figure:
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
    return fig


def plot_depth(traces: Sequence[Trace], path: str | Path) -> Path:
    """a_ℓ with its bootstrap CI band and mean L_ℓ with its q25–q75 band, one line per checkpoint (see draw_depth), saved as a PNG."""
    return _save(draw_depth(traces), path)


def _shade_terminal(ax, table: pd.DataFrame, steps: bool) -> bool:
    """Shade the terminal window T; for L the steps arriving in T (ℓ−1→ℓ, ℓ ∈ T) span [min T − 1, max T]."""
    layers = table["layer"].to_numpy(float)
    term = layers[table["terminal"].astype(bool).to_numpy()]
    if term.size:
        prev = layers[max(int(np.searchsorted(layers, term.min())) - 1, 0)]
        lo, hi = (prev, term.max()) if steps else (term.min() - 0.5, term.max() + 0.5)
        ax.axvspan(lo, hi, color=TERMINAL_COLOR, alpha=0.15, lw=0)
    return bool(term.size)


def draw_deltas(comparison: Comparison) -> Figure:
    """Small multiples: one row per pair, Δa_ℓ and ΔL_ℓ side by side, each panel on its own y-range (an
    over-trained checkpoint's large change does not flatten the others). Bars: paired 95% CIs; filled markers:
    the change counts (Holm p < SIG and beyond the ± null spread, grey); hollow: it does not."""
    if not comparison.pairs:
        raise InputError("the comparison holds no pairs: nothing to plot; compare at least two traces")
    n = len(comparison.pairs)
    fig = Figure(figsize=(10, 1.2 + 2.15 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 2, sharex=True, squeeze=False))
    cs = colors(n + 1)[1:]  # the reference keeps colour 0, as in plot_depth
    terminal = False
    for row, (p, c) in enumerate(zip(comparison.pairs, cs)):
        t = p.table
        layers = t["layer"].to_numpy(float)
        for col, q in enumerate(("a", "L")):
            ax = axes[row, col]
            terminal |= _shade_terminal(ax, t, steps=q == "L")
            x = layers if q == "a" else step_x(layers)
            null = t[f"null_{q}"].to_numpy(float)
            ax.fill_between(x, -null, null, color="grey", alpha=0.25, lw=0)
            d = t[f"d_{q}"].to_numpy(float)
            err = np.vstack([d - t[f"d_{q}_lo"].to_numpy(float), t[f"d_{q}_hi"].to_numpy(float) - d])
            ax.errorbar(x, d, yerr=err, fmt="none", ecolor=c, elinewidth=1.4, capsize=3, zorder=3)
            ok = counts(t, q)
            ax.plot(x[ok], d[ok], "o", color=c, ms=6, zorder=4)
            ax.plot(x[~ok], d[~ok], "o", mfc="white", mec=c, mew=1.4, ms=6, zorder=4)
            ax.axhline(0, color="k", lw=0.8)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_title(text(f"{p.other} − {p.ref}: " + ("Δa_ℓ" if q == "a" else "ΔL_ℓ (radians)")), fontsize=10,
                         loc="left")
    axes[0, 0].figure.suptitle(f"Per-layer change against the reference: {A_NAME} (left), mean Fisher–Rao step "
                               "(right)", fontsize=11)
    axes[-1, 0].set_xlabel("layer ℓ")
    axes[-1, 1].set_xlabel("step ℓ→ℓ+1 (drawn between the layers)")
    handles = [Line2D([], [], ls="", marker="o", color="k", ms=6, label="counts: Holm p < 0.05 and beyond noise"),
               Line2D([], [], ls="", marker="o", mfc="white", mec="k", ms=6, label="does not count"),
               Line2D([], [], color="k", lw=1.4, label="bar: paired 95% CI"),
               Patch(color="grey", alpha=0.35, label="± null spread (split-half of ref)")]
    if terminal:
        handles.append(Patch(color=TERMINAL_COLOR, alpha=0.3, label="terminal window"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def plot_deltas(comparison: Comparison, path: str | Path) -> Path:
    """Δa_ℓ and ΔL_ℓ per pair as small multiples (see draw_deltas), saved as a PNG."""
    return _save(draw_deltas(comparison), path)


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
    return _save(draw_curve(traces), path)


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
    return _save(draw_spectra(traces, layer), path)


def draw_positions(comparison: Comparison) -> Figure:
    """Where in the reply: per pair (rows), the shifted-token share by position with its 95% bootstrap interval
    (left) and the depth × position map of the cross-readout distance (right, when computed), each on its own
    scale."""
    prof = comparison.positions
    if prof is None or prof.empty:
        raise InputError("the comparison has no per-position profile; compare with --stores (and --position-tokens)")
    depth = comparison.depth_position
    pairs = [p for p in comparison.pairs if (prof["other"] == p.other).any()]
    n = len(pairs)
    cols = 2 if depth is not None and not depth.empty else 1
    fig = Figure(figsize=(10, 0.9 + 2.3 * n), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    cs = colors(len(comparison.pairs) + 1)[1:]
    for row, p in enumerate(pairs):
        c = cs[comparison.pairs.index(p)]
        t = prof[(prof["other"] == p.other) & (prof["bin"] != "all") & (prof["tokens"] >= MIN_BIN_TOKENS)]
        x = np.arange(len(t))
        y = t["shifted"].to_numpy(float)
        err = np.vstack([y - t["shifted_lo"].to_numpy(float), t["shifted_hi"].to_numpy(float) - y])
        ax = axes[row, 0]
        ax.bar(x, y, color=c, alpha=0.55, width=0.75)
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="none", ecolor="k", elinewidth=1, capsize=2)
        overall = prof[(prof["other"] == p.other) & (prof["bin"] == "all")]["shifted"]
        if not overall.empty:
            ax.axhline(float(overall.iloc[0]), color=c, ls="--", lw=1.2)
        ax.set_xticks(x, list(t["bin"]), rotation=90, fontsize=8)
        ax.set_title(text(f"{p.other} vs {p.ref}: shifted tokens by position"), fontsize=10, loc="left")
        ax.set_ylabel("share shifted")
        ax.grid(alpha=0.3, axis="y")
        if cols == 2:
            ax2 = axes[row, 1]
            d = depth[depth["other"] == p.other]
            if d.empty:
                ax2.set_visible(False)
                continue
            grid = d.pivot_table(index="layer", columns="bin_index", values="fr_total")
            im = ax2.imshow(grid.to_numpy(float), aspect="auto", origin="lower", cmap="magma",
                            extent=(-0.5, grid.shape[1] - 0.5, grid.index.min() - 0.5, grid.index.max() + 0.5))
            labels = d.drop_duplicates("bin_index").set_index("bin_index")["bin"]
            ax2.set_xticks(np.arange(grid.shape[1]), [labels[i] for i in grid.columns], rotation=90,
                           fontsize=8)
            ax2.set_ylabel("layer ℓ")
            ax2.yaxis.get_major_locator().set_params(integer=True)
            ax2.set_title("lens predictions apart (Fisher–Rao, rad)", fontsize=10, loc="left")
            fig.colorbar(im, ax=ax2, shrink=0.9)
    axes[-1, 0].set_xlabel("position in the stored reply (tokens)")
    if cols == 2:
        axes[-1, 1].set_xlabel("position in the stored reply (tokens)")
    fig.suptitle("Where in the reply: the other checkpoint's top token outside the reference's top 3 (dashed: all "
                 f"positions; bins of < {MIN_BIN_TOKENS} tokens left out)", fontsize=11)
    return fig


def plot_positions(comparison: Comparison, path: str | Path) -> Path:
    """The per-position profile and depth × position map (see draw_positions), saved as a PNG."""
    return _save(draw_positions(comparison), path)


def draw_series(comparison: Comparison) -> Figure:
    """Per checkpoint in training order: its step from the one before as a multiple of the run's typical healthy
    step (the destabilization rule, analyze/compare/stability.py, threshold dashed), and its terminal a gain and L change
    against the reference; destabilized checkpoints flagged."""
    s = comparison.series
    if s is None or s.empty:
        raise InputError("the comparison has no checkpoint series; compare ≥ 3 checkpoints with --series")
    fig = Figure(figsize=(10, 7.6), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[1.3, 1, 1])
    x = np.arange(len(s))
    bad = np.array([bool(v) if pd.notna(v) else False for v in s["destabilized"]])
    factor = comparison.meta.get("jump_factor")
    ax = axes[0]
    shown = False
    for col, name, marker in (("step_a_ratio", "a profile", "o"), ("step_L_ratio", "L profile", "s"),
                              ("step_path_ratio", "path length", "^")):
        if col in s:
            y = s[col].to_numpy(float)
            ok = np.isfinite(y) & (y > 0)
            if ok.any():
                ax.plot(x[ok], y[ok], marker=marker, ls="-", lw=1.2, ms=5, label=name)
                shown = True
    if shown:
        ax.set_yscale("log")
    if factor:
        ax.axhline(float(factor), color=BAD_COLOR, ls="--", lw=1.2, label=f"threshold {float(factor):g}×")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_title("Step from the previous checkpoint, × the run's typical healthy step", fontsize=10)
    ax.set_ylabel("× typical step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=4, loc="upper left")
    spec = [("terminal_a_gain", "Δa over terminal window", f"Terminal gain of the {A_NAME} against the reference"),
            ("terminal_L_change", "ΔL (radians)", "Terminal change of the mean Fisher–Rao step L against the reference")]
    for ax, (col, ylabel, title) in zip(axes[1:], spec):
        y = s[col].to_numpy(float)
        ax.plot(x, y, "o-", color="#1f77b4", lw=1.6, ms=5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes:
        for xi in x[bad]:
            ax.axvspan(xi - 0.4, xi + 0.4, color=BAD_COLOR, alpha=0.08, lw=0)
    for ax, col in zip(axes[1:], ("terminal_a_gain", "terminal_L_change")):
        y = s[col].to_numpy(float)
        ax.plot(x[bad], y[bad], "X", color=BAD_COLOR, ms=12, mec="k", mew=0.6, zorder=5,
                label="destabilized (see the series table for the reason)")
    if bad.any():
        axes[1].legend(fontsize=8)
    axes[-1].set_xticks(x, [text(v) for v in s["label"]], rotation=20, ha="right")
    axes[-1].set_xlabel("checkpoint, in training order")
    return fig


def plot_series(comparison: Comparison, path: str | Path) -> Path:
    """The series view (see draw_series), saved as a PNG."""
    return _save(draw_series(comparison), path)
