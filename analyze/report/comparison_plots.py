"""Figures of a comparison, one row per pair: Δa and ΔL per layer, where in the reply the checkpoints differ, and
the checkpoint series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from spinal.analyze.compare.comparison import LEVEL, Comparison, counts
from spinal.analyze.report.figures import A_NAME, BAD_COLOR, TERMINAL_COLOR, colors, save, step_x, text
from spinal.errors import InputError

SIG = LEVEL  # Holm family-wise level
MIN_BIN_TOKENS = 10  # position bins with fewer tokens are left out of the position figure


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
    return save(draw_deltas(comparison), path)


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
    return save(draw_positions(comparison), path)


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
    return save(draw_series(comparison), path)

