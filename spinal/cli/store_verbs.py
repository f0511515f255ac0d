"""The verbs that make and read a store: `spinal capture`, `spinal inspect` and `spinal verify`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from spinal.cli.options import PROGRESS, VERBOSE, config_options
from spinal.cli.terminal import Bar, cli_errors, err, hf_bars, out, setup_logging
from spinal.config import CaptureConfig
from spinal.errors import SpinalError


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
    PROMPTS may be a dataset (a save_to_disk folder, shards, a Hub id): its layout is recognised and said.
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

    hf_bars(progress)
    for side in cfg.sides():  # one capture, or with --reply both one per side (OUT named by side)
        with Bar("capture" + (f" {side.reply}" if cfg.reply == "both" else ""), "tok", enabled=progress) as bar:
            if service:
                from spinal.cluster.service import capture_with_service

                result = capture_with_service(side, service, address, progress=bar)
            else:
                result = run_capture(side, progress=bar)
        err.print(result.summary(), highlight=False)


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
