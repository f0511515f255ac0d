"""The verb that watches a training run: `spinal watch RUN_DIR` audits its checkpoints as they appear."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import typer

from spinal.cli.options import VERBOSE
from spinal.cli.terminal import cli_errors, err, hf_bars, setup_logging
from spinal.errors import SpinalError


def _help(name: str) -> str:
    """A MonitorConfig field's help (the one place it is written)."""
    from spinal.monitor.config import MonitorConfig

    return next(f.metadata["help"] for f in dataclasses.fields(MonitorConfig) if f.name == name)


@cli_errors
def watch(
    run_dir: str = typer.Argument(..., help="the trainer's output folder, where checkpoint-N folders appear"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="monitor TOML: [monitor] out, prompts, "
                                         "reference, base, poll; [capture], [analyze], [compare] (the flags below "
                                         "override it)"),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help=_help("out")),
    prompts: Optional[str] = typer.Option(None, "--prompts", "-p", help=_help("prompts")),
    reference: Optional[str] = typer.Option(None, "--reference", help=_help("reference")),
    base: Optional[str] = typer.Option(None, "--base", help=_help("base")),
    poll: Optional[float] = typer.Option(None, "--poll", help=_help("poll") + " [default: 30]"),
    once: bool = typer.Option(False, "--once", help="audit the checkpoints there now, then exit (cron, CI)"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="override one stage option, TABLE.KEY=VALUE with "
                                             "TABLE capture, analyze or compare, e.g. --set capture.positions=reply"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="draw progress bars on stderr"),
    verbose: bool = VERBOSE,
) -> None:
    """Audit a training run as it trains, from any trainer: each complete checkpoint-N folder (full model or PEFT
    adapter) is captured, traced and added to the series in step order, with the destabilization flag and one
    report that grows with the run. Killed and restarted, it goes on where it stopped; no checkpoint is audited
    twice. Stop it with Ctrl-C (or use --once)."""
    setup_logging(verbose)
    logging.getLogger("spinal.monitor").setLevel(logging.INFO)  # one line per audited checkpoint, always
    from spinal.fields import apply_sets
    from spinal.monitor.config import load_monitor_config, monitor_config
    from spinal.monitor.watch import watch as run_watch

    given = {"out": out_dir, "prompts": prompts, "reference": reference, "base": base, "poll": poll}
    if config:
        cfg = load_monitor_config(config, sets=sets or [], **given)
    else:
        if not out_dir or not prompts:
            raise SpinalError("give --out (the audit folder) and --prompts (the probe), or --config monitor.toml")
        from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig

        tables: dict = {}
        apply_sets(tables, sets or [], {"capture": CaptureConfig, "analyze": AnalyzeConfig, "compare": CompareConfig})
        cfg = monitor_config(**{k: v for k, v in given.items() if v is not None}, **tables)
    hf_bars(progress)
    try:
        summary = run_watch(cfg, run_dir, once=once)
    except KeyboardInterrupt:
        err.print("stopped; `spinal watch` again goes on from here", highlight=False)
        raise typer.Exit(130)
    flagged = ", ".join(map(str, summary.flagged)) or "none"
    err.print(f"audited {len(summary.audited)} checkpoint(s); flagged destabilized: {flagged}; report: "
              f"{cfg.out}/report/report.html", highlight=False)
