"""The `spinal` command line: one typer function per verb, flags -> config -> one call; errors -> one line, exit 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spinal.config import AnalyzeConfig, CaptureConfig
from spinal.errors import SpinalError

app = typer.Typer(
    name="spinal",
    help="Audit where preference alignment (DPO) reshapes a language model across depth.\n\n"
    "capture: checkpoint + prompts -> lossless Zarr store of every layer's residual stream. "
    "analyze: store -> depth trace (contraction a, transport L per layer), CPU only. "
    "compare: traces -> Δ per layer with paired CIs. report: plots and one HTML page. run: the whole batch job from a TOML config. "
    "serve: keep checkpoints loaded on Ray. plan: size a cluster capture from a model config. inspect / verify: what a store holds, and whether every chunk reads back intact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console()


def _h(cls, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("help", "")


def _d(cls, name: str):
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def cli_errors(fn):
    """Map SpinalError (and a few user-caused OS errors) to one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpinalError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # the environment refused (disk full, read-only, permissions): one line, not a trace
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            err.print(f"[bold red]error:[/] {escape((e.strerror or str(e)) + where)}; nothing stored before was "
                      "lost (finish a capture with --resume)", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; finished units are kept (rerun with --resume)")
            raise typer.Exit(130) from None

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # transformers is optional for inspect/verify
        pass


class _Bar:
    """A rich progress bar with a rate, driven by (done, total) callbacks."""

    def __init__(self, label: str, unit: str, enabled: bool = True):
        self.unit = unit
        self.p = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} " + unit),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, disable=not enabled, transient=False,
        )
        self.task = None
        self.start_done = None

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.p.add_task("", total=total, rate="")
            self.start_done = done
        t = self.p.tasks[self.task]
        rate = (done - self.start_done) / t.elapsed if t.elapsed else 0.0
        self.p.update(self.task, completed=done, total=total, rate=f"{rate:,.0f} {self.unit}/s")


C = CaptureConfig


@app.command()
@cli_errors
def capture(
    model: Optional[str] = typer.Argument(None, help=_h(C, "model") + " (omit with --service)"),
    prompts: str = typer.Option(..., "--prompts", "-p", help=_h(C, "prompts")),
    out: str = typer.Option(..., "--out", "-o", help=_h(C, "out")),
    layers: str = typer.Option(_d(C, "layers"), help=_h(C, "layers")),
    positions: str = typer.Option(_d(C, "positions"), help=_h(C, "positions")),
    batch_size: int = typer.Option(_d(C, "batch_size"), help=_h(C, "batch_size")),
    max_length: int = typer.Option(_d(C, "max_length"), help=_h(C, "max_length")),
    dtype: str = typer.Option(_d(C, "dtype"), help=_h(C, "dtype")),
    device_map: Optional[str] = typer.Option(None, help=_h(C, "device_map")),
    max_memory: Optional[str] = typer.Option(None, help=_h(C, "max_memory")),
    chat_template: bool = typer.Option(False, "--chat-template", help=_h(C, "chat_template")),
    unit_tokens: int = typer.Option(_d(C, "unit_tokens"), help=_h(C, "unit_tokens")),
    resume: bool = typer.Option(False, "--resume", help=_h(C, "resume")),
    overwrite: bool = typer.Option(False, "--overwrite", help=_h(C, "overwrite")),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=_h(C, "trust_remote_code")),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=_h(C, "allow_pickle")),
    allow_offload: bool = typer.Option(False, "--allow-offload", help=_h(C, "allow_offload")),
    no_self_check: bool = typer.Option(False, "--no-self-check", help="skip the start-up self-checks (not advised)"),
    service: Optional[str] = typer.Option(None, "--service", help="send the prompts to the loaded replicas of this "
                                          "label (see `spinal serve`) instead of loading the model here"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster of the service (default: auto)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw a progress bar on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens"),
) -> None:
    """Capture every layer's residual stream of MODEL on a prompt set into a lossless Zarr store.

    Layer 0 is the embedding output, layer ℓ the output of block ℓ before the final norm.
    The store also holds the lens (final norm + unembedding) so analysis never needs the model.
    Interrupted runs finish with --resume, redoing exactly the units not marked done.
    """
    _setup_logging(verbose)
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
    cfg = CaptureConfig(
        model=model, prompts=prompts, out=out, layers=layers, positions=positions, batch_size=batch_size,
        max_length=max_length, dtype=dtype, device_map=device_map, max_memory=max_memory,
        chat_template=chat_template, unit_tokens=unit_tokens, resume=resume, overwrite=overwrite,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, allow_offload=allow_offload,
        self_check=not no_self_check,
    )
    from spinal.capture import capture as run_capture

    with _Bar("capture", "tok", enabled=progress) as bar:
        if service:
            from spinal.cluster.service import capture_with_service

            result = capture_with_service(cfg, service, address, progress=bar)
        else:
            result = run_capture(cfg, progress=bar)
    rate = result.tokens / result.seconds if result.seconds else 0.0
    err.print(
        f"wrote {result.units_written} unit(s) ({result.units_skipped} already done) to {result.path}: "
        f"{result.tokens:,} tokens, {result.seconds:.1f} s, {rate:,.0f} tok/s",
        highlight=False,
    )


@app.command()
@cli_errors
def inspect(
    store: str = typer.Argument(..., help="store path or URL"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
) -> None:
    """Show what a store holds: model, layers, tokens, completeness, size."""
    from spinal.store import Store
    from spinal.summary import summary

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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw a progress bar on stderr"),
) -> None:
    """Read every chunk of a store; report damaged chunks by layer and token range (exit 1 if any)."""
    from spinal.store import Store
    from spinal.verify import verify as run_verify

    s = Store.open(store)
    with _Bar("verify", "chunks", enabled=progress) as bar:
        report = run_verify(s, progress=bar)
    for d in report.damage:
        out.print(f"DAMAGED {d}", highlight=False)
    note = f"; {report.units_not_done} unit(s) not captured yet" if report.units_not_done else ""
    if report.unchecked:
        err.print(f"note: {len(report.unchecked)} array(s) carry no checksum (made by an older SPINAL), so "
                  f"damage there cannot be detected: {', '.join(report.unchecked)}", highlight=False)
    if report.ok:
        out.print(f"OK: {report.chunks_read:,} chunks read, no damage{note}", highlight=False)
    else:
        out.print(f"{len(report.damage)} damaged of {report.chunks_read:,} chunks read{note}", highlight=False)
        raise typer.Exit(1)


A = AnalyzeConfig


@app.command()
@cli_errors
def analyze(
    store: str = typer.Argument(..., help=_h(A, "store")),
    out: str = typer.Option(..., "--out", "-o", help=_h(A, "out")),
    label: Optional[str] = typer.Option(None, help="name of this checkpoint in tables and plots (default: store name)"),
    layers: str = typer.Option(_d(A, "layers"), help=_h(A, "layers")),
    window: str = typer.Option(_d(A, "window"), help=_h(A, "window")),
    blocks: int = typer.Option(_d(A, "blocks"), help=_h(A, "blocks")),
    n_boot: int = typer.Option(_d(A, "n_boot"), help=_h(A, "n_boot")),
    null_splits: int = typer.Option(_d(A, "null_splits"), help=_h(A, "null_splits")),
    seed: int = typer.Option(_d(A, "seed"), help=_h(A, "seed")),
    lens_tokens: int = typer.Option(_d(A, "lens_tokens"), help=_h(A, "lens_tokens")),
    companion_tokens: int = typer.Option(_d(A, "companion_tokens"), help=_h(A, "companion_tokens")),
    chunk_mib: int = typer.Option(_d(A, "chunk_mib"), help=_h(A, "chunk_mib")),
    workers: int = typer.Option(_d(A, "workers"), help=_h(A, "workers")),
    overwrite: bool = typer.Option(False, "--overwrite", help=_h(A, "overwrite")),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw a progress bar on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens"),
) -> None:
    """Turn a store into a depth trace: contraction a and transport L per layer (CPU only, out of core).

    Writes trace.parquet / trace.csv (one row per layer), trace.json (every option used),
    bootstrap.parquet (replicates of a, for paired comparisons), sequences.parquet (mean L per
    sequence) and spectra.npz.
    """
    _setup_logging(verbose)
    cfg = AnalyzeConfig(store=store, out=out, layers=layers, window=window, blocks=blocks, n_boot=n_boot,
                        null_splits=null_splits, seed=seed, lens_tokens=lens_tokens, companion_tokens=companion_tokens,
                        chunk_mib=chunk_mib,
                        workers=workers, overwrite=overwrite)
    from spinal.analyze.trace import analyze as run_analyze
    from spinal.outputs import check_output

    check_output(out, "trace", overwrite)  # before any work: a refused output costs nothing
    with _Bar("analyze", "tasks", enabled=progress) as bar:
        trace = run_analyze(cfg, progress=bar, label=label)
    trace.save(out, overwrite=overwrite)
    t = trace.table
    bad = int((t["status"] != "ok").sum())
    err.print(
        f"trace of {trace.meta['n_tokens']:,} tokens × {len(t)} layers written to {out} "
        f"({trace.meta['seconds']:.1f} s); path length {trace.meta['path_length']:.4g}, "
        f"straightness {trace.meta['straightness']:.3g}; {bad} layer(s) with fit status other than ok",
        highlight=False,
    )


@app.command()
@cli_errors
def compare(
    traces: list[str] = typer.Argument(..., help="trace folders: the reference first, then checkpoints in order"),
    out: str = typer.Option(..., "--out", "-o", help="comparison folder (compare.parquet/.csv/.json, series.csv)"),
    weights: Optional[list[str]] = typer.Option(
        None, "--weights", help="checkpoint folders in the same order, for the per-block parameter change"),
    stores: Optional[list[str]] = typer.Option(
        None, "--stores", help="the traces' stores in the same order, for the cross-readout lens"),
    cross_tokens: int = typer.Option(20000, help="tokens (seeded subsample) for the cross-readout lens"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples for ΔL (Δa pairs the traces' own replicates)"),
    seed: int = typer.Option(0, help="seed of the ΔL bootstrap and the split-halves"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing comparison folder"),
) -> None:
    """Compare checkpoints on the identical token stream: Δa and ΔL per layer with paired CIs (Holm), onset, localization."""
    from spinal.analyze.compare import check_stores, check_weights, compare as run_compare
    from spinal.analyze.trace import Trace
    from spinal.analyze.weights import block_sq_change
    from spinal.outputs import check_output

    check_output(out, "comparison", overwrite)
    if n_boot < 1:
        raise SpinalError(f"--n-boot {n_boot}: the ΔL bootstrap needs ≥ 1 resample (default 1000)")
    loaded = [Trace.load(t) for t in traces]
    if weights:
        check_weights(loaded, weights)
    if stores:
        check_stores(loaded, stores)
    grad = None
    if weights:
        n_blocks = int(max(loaded[0].table["layer"]))
        grad = [None] + [block_sq_change(weights[0], w, n_blocks) for w in weights[1:]]
    result = run_compare(loaded, seed=seed, n_boot=n_boot, grad=grad)
    if stores:
        from spinal.analyze.compare import with_cross_readout
        from spinal.analyze.cross_readout import cross_readout

        frames = {t.label: cross_readout(stores[0], s, lens_tokens=cross_tokens, seed=seed)
                  for t, s in zip(loaded[1:], stores[1:])}
        result = with_cross_readout(result, frames)
    result.save(out, overwrite=overwrite)
    for p in result.pairs:
        s = p.summary
        err.print(
            f"{p.other} vs {p.ref}: onset a {s['onset_a']}, onset L {s['onset_L']}, terminal share of |Δa| "
            f"{s['terminal_share_a']:.2f}, Δ_align {s['delta_align']:+.4g} ± {s['delta_align_se']:.2g}",
            highlight=False,
        )
    err.print(f"comparison written to {out}", highlight=False)


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
    from spinal.analyze.compare import Comparison
    from spinal.analyze.report import write_report
    from spinal.analyze.trace import Trace

    from spinal.outputs import check_output

    check_output(out, "report", overwrite)
    loaded = [Trace.load(t) for t in traces]
    cmp = Comparison.load(comparison) if comparison else None
    path = write_report(loaded, cmp, out, overwrite=overwrite)
    err.print(f"report written to {path}", highlight=False)


@app.command()
@cli_errors
def plan(
    model: str = typer.Argument(..., help="preset (llama-3-8b, llama-3-70b, qwen2.5-72b, mistral-7b) or a local "
                                          "config.json / checkpoint folder; no weights are read"),
    gpus_per_node: int = typer.Option(8, help="GPUs in each node (a replica never spans nodes)"),
    gpu_memory_gib: float = typer.Option(80.0, help="memory of one GPU, GiB"),
    nodes: int = typer.Option(1, help="nodes with GPUs"),
    tokens: int = typer.Option(512 * 512, help="stored tokens per checkpoint (prompts × tokens per prompt)"),
    dtype: str = typer.Option("bfloat16", help="weights and activations dtype"),
    layers: str = typer.Option("all", help="stored layers, capture's syntax"),
    gpus_per_replica: Optional[int] = typer.Option(None, help="force the GPUs per replica (default: the fewest that fit)"),
    allow_offload: bool = typer.Option(False, "--allow-offload", help="plan a replica that spills to CPU/disk"),
    assume: Optional[list[str]] = typer.Option(
        None, "--set", help="override any other PlanConfig field, e.g. --set gpu_tflops=312 --set mfu=0.35 "
                            "(the throughput assumptions are printed with the plan)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Size a capture before paying for it: GPUs per replica, device maps, store size, capture and analysis time."""
    import dataclasses as dc

    from spinal.cluster.plan import PlanConfig, plan as make_plan
    from spinal.config import from_dict

    values = dict(model=model, gpus_per_node=gpus_per_node, gpu_memory_gib=gpu_memory_gib, nodes=nodes,
                  tokens=tokens, dtype=dtype, layers=layers, gpus_per_replica=gpus_per_replica,
                  allow_offload=allow_offload)
    types = {f.name: str(f.type) for f in dc.fields(PlanConfig)}
    for item in assume or []:
        if "=" not in item:
            raise SpinalError(f"--set {item!r}: expected KEY=VALUE, e.g. --set mfu=0.35")
        k, v = (x.strip() for x in item.split("=", 1))
        typ = types.get(k, "")
        try:
            values[k] = int(v) if typ.startswith("int") else float(v) if "float" in typ else (
                v.lower() in ("1", "true", "yes") if typ.startswith("bool") else v)
        except ValueError:
            raise SpinalError(f"--set {k}={v}: expected a number for {k} ({typ})") from None
    result = make_plan(from_dict(PlanConfig, values, where="spinal plan"))
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
    else:
        out.print(result.render(), highlight=False, soft_wrap=True)


class _StageBars:
    """One progress line per (stage, checkpoint) for `spinal run`."""

    def __init__(self, enabled: bool):
        self.p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=not enabled,
        )
        self.tasks: dict = {}

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def __call__(self, stage: str, label: str, done: int, total: int) -> None:
        key = (stage, label)
        if key not in self.tasks:
            unit = "tok" if stage == "capture" else "tasks"
            self.tasks[key] = self.p.add_task(f"{stage:<8} {label} ({unit})", total=total)
        self.p.update(self.tasks[key], completed=done, total=total)


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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw progress bars on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what happens"),
) -> None:
    """Batch job: capture every checkpoint, analyze each store, compare against the first, write the HTML report."""
    _setup_logging(verbose)
    if resume and overwrite:
        raise SpinalError("--resume and --overwrite contradict each other: choose one")
    from spinal.cluster.run import run as run_all
    from spinal.config import load_run_config

    cfg = load_run_config(config)
    t0 = __import__("time").perf_counter()
    with _StageBars(progress) as bars:
        summary = run_all(cfg, resume=resume, overwrite=overwrite, progress=bars, address=address, service=service)
    for s in summary.stages:
        tag = "reused" if s["skipped"] else f"{s['seconds']:.1f} s"
        err.print(f"  {s['stage']:<8} {s['label']:<24} {tag:>10}  {s['detail']}", highlight=False)
    err.print(f"run finished in {__import__('time').perf_counter() - t0:.1f} s; report: {summary.report}",
              highlight=False)


def main() -> None:
    """Console entry: usage errors (unknown option, wrong type, missing option) are one line and exit 2 too."""
    try:  # typer ≥ 0.20 carries its own copy of click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        rv = app(standalone_mode=False)
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path.replace("python -m spinal.cli", "spinal") if e.ctx else "spinal"
        err.print(f"[bold red]error:[/] {escape(e.format_message())} (see `{cmd} --help`)", highlight=False,
                  soft_wrap=True)
        sys.exit(2)
    except Exception as e:
        if type(e).__name__ == "Abort":  # Ctrl-C outside a command
            sys.exit(130)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
