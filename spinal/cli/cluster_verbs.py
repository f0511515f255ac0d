"""The verbs of batch jobs and clusters: `spinal serve`, `spinal plan` and `spinal run`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from spinal.cli.options import VERBOSE, config_options
from spinal.cli.terminal import StageBars, cli_errors, err, hf_bars, out, setup_logging
from spinal.cluster.planner.config import PlanConfig
from spinal.errors import SpinalError


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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress on stderr: bars on a terminal, else "
                                  "a log line per stage and checkpoint with the elapsed time"),
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
    hf_bars(progress)
    with StageBars(progress) as bars:
        summary = run_all(cfg, resume=resume, overwrite=overwrite, progress=bars, address=address, service=service,
                          on_stage=bars.stage)
    for s in summary.stages:
        tag = "reused" if s["skipped"] else f"{s['seconds']:.1f} s"
        err.print(f"  {s['stage']:<8} {s['label']:<24} {tag:>10}  {s['detail']}", highlight=False)
    err.print(f"run finished in {__import__('time').perf_counter() - t0:.1f} s; report: {summary.report}",
              highlight=False)
