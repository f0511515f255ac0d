"""The verbs from a store to a report: `spinal analyze`, `spinal compare` and `spinal report`."""

from __future__ import annotations

from typing import Optional

import typer

from spinal.cli.options import PROGRESS, VERBOSE, config_options
from spinal.cli.terminal import Bar, cli_errors, err, setup_logging
from spinal.config import AnalyzeConfig, CompareConfig
from spinal.errors import need


@cli_errors
@config_options(AnalyzeConfig, arguments={"store": ...})
def analyze(
    options: dict,
    label: Optional[str] = typer.Option(None, help="name of this checkpoint in tables and plots (default: store name)"),
    progress: bool = PROGRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Turn a store into a depth trace: contraction a and transport L per layer (CPU only, out of core).

    Writes trace.parquet / trace.csv (one row per layer), trace.json (every option used),
    bootstrap.parquet (replicates of a, for paired comparisons), sequences.parquet (mean L per
    sequence) and spectra.npz.
    """
    setup_logging(verbose)
    cfg = AnalyzeConfig(**options)
    from spinal.analyze.trace import analyze as run_analyze
    from spinal.outputs import claimed_output

    if "://" not in cfg.store:
        need(cfg.store, "folder", "store")
    with claimed_output(cfg.out, "trace", cfg.overwrite):  # before any work: a refused output costs nothing
        with Bar("analyze", "tasks", enabled=progress) as bar:
            trace = run_analyze(cfg, progress=bar, label=label)
        trace.save(cfg.out, overwrite=cfg.overwrite)
    t = trace.table
    bad = int((t["status"] != "ok").sum())
    err.print(
        f"trace of {trace.meta['n_tokens']:,} tokens × {len(t)} layers written to {cfg.out} "
        f"({trace.meta['seconds']:.1f} s); path length {trace.meta['path_length']:.4g}, "
        f"straightness {trace.meta['straightness']:.3g}; {bad} layer(s) with fit status other than ok; "
        f"{_lens_line(trace.meta)}",
        highlight=False,
    )


def _lens_line(m: dict) -> str:
    """How many tokens the lens read, and why that many."""
    n, pilot, p = m["lens_tokens"], m.get("lens_pilot", m["lens_tokens"]), m["L_precision"]
    grown = f", grown from a {pilot:,}-token pilot in {m['lens_rounds']} round(s)" if n > pilot else ""
    return f"L read on {n:,} tokens{grown}, precision {100 * p:.2f} % of the L curve's spread"


@cli_errors
@config_options(CompareConfig)
def compare(
    options: dict,
    traces: list[str] = typer.Argument(..., help="trace folders: the reference first, then checkpoints in order"),
    out: str = typer.Option(..., "--out", "-o", help="comparison folder (compare.parquet/.csv/.json, series.csv; positions and depth_position .parquet/.csv with --stores)"),
    weights: Optional[list[str]] = typer.Option(
        None, "--weights", help="checkpoint folders (or Hub ids, read from their cached snapshot) in the same "
        "order, for the per-block parameter change"),
    stores: Optional[list[str]] = typer.Option(
        None, "--stores", help="the traces' stores in the same order, for the cross-readout lens and "
        "where in the reply the checkpoints differ (--position-tokens)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing comparison folder"),
    as_json: bool = typer.Option(False, "--json", help="also print compare.json (per-pair summaries, series, "
                                 "options) on stdout"),
) -> None:
    """Compare checkpoints on the identical token stream (or one checkpoint's chosen and rejected replies, paired by
    prompt): Δa and ΔL per layer with paired CIs (Holm), onset, localization."""
    from spinal.api import compare as compare_traces
    from spinal.outputs import claimed_output

    for t in traces:
        need(t, "folder", "trace folder")
    for s in stores or []:
        if "://" not in s:
            need(s, "folder", "store")
    cfg = CompareConfig(**options)
    with claimed_output(out, "comparison", overwrite):
        result = compare_traces(traces, cfg, weights=weights, stores=stores)
        result.save(out, overwrite=overwrite)
    for p in result.pairs:
        s = p.summary
        err.print(
            f"{p.other} vs {p.ref}: onset a {s['onset_a']}, onset L {s['onset_L']}, terminal share of |Δa| "
            f"{s['terminal_share_a']:.2f}, terminal Δa − ΔL {s['delta_align']:+.4g} ± {s['delta_align_se']:.2g}",
            highlight=False,
        )
        if s.get("pairing") == "prompt":
            err.print(f"{p.other} vs {p.ref}: paired by prompt (different tokens); per-position KL, shifted share and "
                      f"cross-readout not computed. {s.get('token_count_caveat') or ''}".rstrip(), highlight=False)
    for m in result.meta.get("mixed") or []:
        err.print(f"mixed (--allow-mixed): {m['what']} {m['values'][0]} ({m['ref']}) and {m['values'][1]} "
                  f"({m['other']})", highlight=False)
    if result.series is not None:
        from spinal.analyze.compare.stability import flag_text, largest_ratio

        for row in result.series.to_dict(orient="records")[1:]:
            text = flag_text(row, cfg.jump_factor)
            top = largest_ratio(row)
            text = ("flagged destabilized: " + text.removeprefix("yes: ") if row["destabilized"] else
                    "not judged (first step)" if text.startswith("–") else
                    "not flagged" + (f" (largest step {top:.1f}× the typical healthy step)" if top is not None else ""))
            err.print(f"series: {row['label']} {text}", highlight=False)
    err.print(f"comparison written to {out}", highlight=False)
    if as_json:
        from pathlib import Path

        typer.echo((Path(out) / "compare.json").read_text().rstrip("\n"))


@cli_errors
def report(
    traces: list[str] = typer.Argument(..., help="trace folders (the reference first)"),
    out: str = typer.Option(..., "--out", "-o", help="report folder: report.html and plots/*.png"),
    comparison: Optional[str] = typer.Option(None, "--compare", "-c", help="comparison folder from `spinal compare`"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing report folder (only a SPINAL one)"),
) -> None:
    """Write PNG plots and one self-contained HTML report (opens offline) from traces and a comparison."""
    from spinal.api import report as write_report
    from spinal.outputs import claimed_output

    for t in traces:
        need(t, "folder", "trace folder")
    if comparison:
        need(comparison, "folder", "comparison folder")
    with claimed_output(out, "report", overwrite):
        path = write_report(traces, comparison, out, overwrite=overwrite)
    err.print(f"report written to {path}", highlight=False)
