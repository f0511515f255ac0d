"""The `spinal` command line: one typer function per verb: flags -> config -> one call; errors -> one line, exit 2."""

from __future__ import annotations

import json
from typing import Optional

import typer

from spinal.cli.options import config_options
from spinal.cluster.planner.config import PlanConfig
from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import SpinalError
from spinal.cli.terminal import Bar, StageBars, cli_errors, err, out, run_app, setup_logging

def _hf_bars(progress: bool) -> None:
    """--no-progress silences transformers' own bars too (loading shards, dequantizing a GGUF)."""
    if not progress:
        import os

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ["TQDM_DISABLE"] = "1"  # the GGUF dequantizer calls plain tqdm, which reads this at each bar


def _usage_name(self) -> str:
    """Arguments in the usage line as Unix usage writes them: STORE, [STORE], TRACES... (typer 0.2x prints
    '{store}', which reads as a template placeholder left unfilled)."""
    name = self.display_name_raw.upper()
    return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


typer.core.TyperArgument._usage_display_name = _usage_name  # checked by tests/spinal/test_config.py

app = typer.Typer(
    name="spinal",
    help="Audit where preference alignment (DPO) reshapes a language model across depth.\n\n"
    "capture: checkpoint + prompts -> lossless Zarr store of every layer's residual stream. "
    "analyze: store -> depth trace (contraction a, transport L per layer), CPU only. "
    "compare: traces -> Δ per layer with paired CIs. report: plots and one HTML page. run: the whole batch job from a TOML config. "
    "serve: keep checkpoints loaded on Ray. plan: size a cluster capture from a model config. inspect / verify: what a store holds, and whether every chunk reads back intact.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help shows TOML names ([run], [[checkpoints]]) as written, never as markup
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        import spinal

        out.print(f"spinal {spinal.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Audit where preference alignment (DPO) reshapes a language model across depth."""


PROGRESS = typer.Option(True, "--progress/--no-progress", help="draw a progress bar on stderr")
VERBOSE = typer.Option(False, "--verbose", "-v", help="log what happens")


@app.command()
@cli_errors
@config_options(CaptureConfig, arguments={"model": None})
def capture(
    options: dict,
    service: Optional[str] = typer.Option(None, "--service", help="send the prompts to the loaded replicas of this "
                                          "label (see `spinal serve`) instead of loading the model here"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster of the service (default: auto)"),
    progress: bool = PROGRESS,
    verbose: bool = VERBOSE,
) -> None:
    """Capture every layer's residual stream of MODEL on a prompt set into a lossless Zarr store.

    Layer 0 is the embedding output, layer ℓ the output of block ℓ before the final norm.
    The store also holds the lens (final norm + unembedding) so analysis never needs the model.
    Interrupted runs finish with --resume, redoing exactly the units not marked done.
    With --service LABEL, omit MODEL: the loaded replicas of that label capture.
    """
    setup_logging(verbose)
    model = options["model"]
    if service:
        from spinal.cluster.service import status

        served = [r for r in status(address) if r.label == service and r.alive]
        if not served:
            raise SpinalError(f"no live replica serves {service!r}; start it with `spinal serve CONFIG`")
        if model and model != served[0].model:
            raise SpinalError(f"service {service!r} serves {served[0].model}, not {model}")
        model = served[0].model
    if not model:
        raise SpinalError("give the MODEL folder (or --service LABEL)")
    cfg = CaptureConfig(**{**options, "model": model})
    from spinal.capture import capture as run_capture

    _hf_bars(progress)

    with Bar("capture", "tok", enabled=progress) as bar:
        if service:
            from spinal.cluster.service import capture_with_service

            result = capture_with_service(cfg, service, address, progress=bar)
        else:
            result = run_capture(cfg, progress=bar)
    err.print(result.summary(), highlight=False)


@app.command()
@cli_errors
def inspect(
    store: str = typer.Argument(..., help="store path or URL"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
) -> None:
    """Show what a store holds: model, layers, tokens, completeness, size."""
    from spinal.store.contract import Store
    from spinal.store.summary import summary

    s = summary(Store.open(store))
    if as_json:
        out.print_json(json.dumps(s, default=str))
        return
    for k, v in s.items():
        if k in ("software", "self_check"):
            v = json.dumps(v, default=str)
        out.print(f"[bold]{k:>20}[/]  {v}", highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def verify(
    store: str = typer.Argument(..., help="store path or URL"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON (ok, chunks_read, damage with "
                                 "layer and token range, units_not_done, unchecked); exit code as without"),
    progress: bool = PROGRESS,
) -> None:
    """Read every chunk of a store; report damaged chunks by layer and token range (exit 1 if any)."""
    from dataclasses import asdict

    from spinal.store.contract import Store
    from spinal.store.verify import verify as run_verify

    s = Store.open(store)
    with Bar("verify", "chunks", enabled=progress) as bar:
        report = run_verify(s, progress=bar)
    if as_json:
        out.print_json(json.dumps({"store": store, "ok": report.ok, **asdict(report)}))
        if not report.ok:
            raise typer.Exit(1)
        return
    for d in report.damage:
        out.print(f"DAMAGED {d}", highlight=False)
    n = report.units_not_done
    note = f"; {n} unit{'s' * (n != 1)} not captured yet" if n else ""
    if report.unchecked:
        err.print(f"note: {len(report.unchecked)} array(s) carry no checksum (made by an older SPINAL), so "
                  f"damage there cannot be detected: {', '.join(report.unchecked)}", highlight=False)
    if report.ok:
        out.print(f"OK: {report.counts()} read, no damage{note}", highlight=False)
    else:
        out.print(f"{len(report.damage)} damaged; {report.counts()} read{note}", highlight=False)
        raise typer.Exit(1)


@app.command()
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
    from spinal.outputs import check_output

    check_output(cfg.out, "trace", cfg.overwrite)  # before any work: a refused output costs nothing
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


@app.command()
@cli_errors
@config_options(CompareConfig)
def compare(
    options: dict,
    traces: list[str] = typer.Argument(..., help="trace folders: the reference first, then checkpoints in order"),
    out: str = typer.Option(..., "--out", "-o", help="comparison folder (compare.parquet/.csv/.json, series.csv; positions and depth_position .parquet/.csv with --stores)"),
    weights: Optional[list[str]] = typer.Option(
        None, "--weights", help="checkpoint folders in the same order, for the per-block parameter change"),
    stores: Optional[list[str]] = typer.Option(
        None, "--stores", help="the traces' stores in the same order, for the cross-readout lens and "
        "where in the reply the checkpoints differ (--position-tokens)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing comparison folder"),
    as_json: bool = typer.Option(False, "--json", help="also print compare.json (per-pair summaries, series, "
                                 "options) on stdout"),
) -> None:
    """Compare checkpoints on the identical token stream: Δa and ΔL per layer with paired CIs (Holm), onset, localization."""
    from spinal.api import compare as compare_traces
    from spinal.outputs import check_output

    check_output(out, "comparison", overwrite)
    cfg = CompareConfig(**options)
    result = compare_traces(traces, cfg, weights=weights, stores=stores)
    result.save(out, overwrite=overwrite)
    for p in result.pairs:
        s = p.summary
        err.print(
            f"{p.other} vs {p.ref}: onset a {s['onset_a']}, onset L {s['onset_L']}, terminal share of |Δa| "
            f"{s['terminal_share_a']:.2f}, terminal Δa − ΔL {s['delta_align']:+.4g} ± {s['delta_align_se']:.2g}",
            highlight=False,
        )
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


@app.command()
@cli_errors
def serve(
    config: Optional[str] = typer.Argument(None, help="run config whose checkpoints to serve (its cluster table: replicas, "
                                                      "gpus_per_replica)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (default: auto, the running one)"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="serve/stop only these checkpoint labels"),
    show: bool = typer.Option(False, "--status", help="list the serving replicas"),
    stop_: bool = typer.Option(False, "--stop", help="stop the serving replicas"),
) -> None:
    """Keep checkpoints loaded on a Ray cluster as named, detached replicas; `capture --service` and
    `run --service` send prompt sets to them without reloading."""
    from spinal.cluster import service as svc

    if stop_:
        names = svc.stop(address, only)
        err.print(f"stopped {len(names)} replica(s): {', '.join(names) or 'none'}", highlight=False)
        return
    if not show:
        if not config:
            raise SpinalError("give a run config to serve, or --status / --stop")
        from spinal.config import load_run_config

        svc.serve(load_run_config(config), address, only)
    replicas = svc.status(address)
    if not replicas:
        out.print("no replicas serving")
    for r in replicas:
        state = "alive" if r.alive else "DEAD"
        out.print(f"{r.name:<28} {state:<6} pid {r.pid}  loads {r.loads}  captures {r.captures}  {r.model}",
                  highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def report(
    traces: list[str] = typer.Argument(..., help="trace folders (the reference first)"),
    out: str = typer.Option(..., "--out", "-o", help="report folder: report.html and plots/*.png"),
    comparison: Optional[str] = typer.Option(None, "--compare", "-c", help="comparison folder from `spinal compare`"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing report folder (only a SPINAL one)"),
) -> None:
    """Write PNG plots and one self-contained HTML report (opens offline) from traces and a comparison."""
    from spinal.api import report as write_report
    from spinal.outputs import check_output

    check_output(out, "report", overwrite)
    path = write_report(traces, comparison, out, overwrite=overwrite)
    err.print(f"report written to {path}", highlight=False)


@app.command()
@cli_errors
@config_options(PlanConfig, arguments={"model": ...})
def plan(
    options: dict,
    assume: Optional[list[str]] = typer.Option(
        None, "--set", help="override an assumption (the PlanConfig fields printed with the plan), e.g. "
                            "--set gpu_tflops=312 --set mfu=0.35"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Size a capture before paying for it: GPUs per replica, device maps, store size, capture and analysis time."""
    from spinal.cluster.planner.plan import plan as make_plan
    from spinal.fields import settings

    from spinal.cluster.planner.config import from_run

    notes: list[str] = []
    run_values = from_run(options["model"], notes) if options["model"].endswith(".toml") else {}
    for note in notes:
        err.print(f"note: {note}", highlight=False)
    values = {**options, **run_values, **settings(PlanConfig, assume or [], "--set")}
    result = make_plan(PlanConfig(**values))
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
    else:
        out.print(result.render(), highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def run(
    config: str = typer.Argument(..., help="run config (TOML): [run] out/prompts, [[checkpoints]], [capture], "
                                           "[analyze], [compare]"),
    resume: bool = typer.Option(False, "--resume", help="finish an interrupted run: completed stages are kept"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete the run folder and start again"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join ('auto' or HOST:PORT); "
                                          "default: in-process, or a local Ray instance when [cluster] replicas > 1"),
    service: bool = typer.Option(False, "--service", help="capture on the replicas started by `spinal serve` for "
                                                         "each checkpoint label"),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="run folder instead of the TOML's [run] out"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="override one stage option, TABLE.KEY=VALUE with "
                                             "TABLE capture, analyze, compare or cluster (repeatable), e.g. "
                                             "--set analyze.n_boot=2000 --set capture.dtype=bfloat16; recorded in "
                                             "run.json like the file's own"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw progress bars on stderr"),
    verbose: bool = VERBOSE,
) -> None:
    """Batch job: capture every checkpoint, analyze each store, compare against the first, write the HTML report."""
    setup_logging(verbose)
    if resume and overwrite:
        raise SpinalError("--resume and --overwrite contradict each other: choose one")
    from spinal.cluster.run import run as run_all
    from spinal.config import load_run_config

    cfg = load_run_config(config, out=out_dir, sets=sets or [])
    t0 = __import__("time").perf_counter()
    _hf_bars(progress)
    with StageBars(progress) as bars:
        summary = run_all(cfg, resume=resume, overwrite=overwrite, progress=bars, address=address, service=service)
    for s in summary.stages:
        tag = "reused" if s["skipped"] else f"{s['seconds']:.1f} s"
        err.print(f"  {s['stage']:<8} {s['label']:<24} {tag:>10}  {s['detail']}", highlight=False)
    err.print(f"run finished in {__import__('time').perf_counter() - t0:.1f} s; report: {summary.report}",
              highlight=False)


def main() -> None:
    """Console entry: usage errors (unknown option, wrong type, missing option) are one line and exit 2 too."""
    run_app(app)


if __name__ == "__main__":
    main()
