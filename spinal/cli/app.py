"""The `spinal` command line: the typer app with its verbs (one module per group of them) in `spinal --help` order."""

from __future__ import annotations

import typer

from spinal.cli.analysis_verbs import analyze, compare, report
from spinal.cli.cluster_verbs import plan, run, serve
from spinal.cli.monitor_verbs import watch
from spinal.cli.store_verbs import capture, inspect, verify
from spinal.cli.terminal import out, run_app


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
    "compare: traces -> Δ per layer with paired CIs. report: plots and one HTML page. run: the whole batch job from a TOML config. watch: audit a training run's checkpoints as they appear. "
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


for _verb in (capture, inspect, verify, analyze, compare, serve, report, plan, run, watch):  # the order `spinal --help` lists
    app.command()(_verb)


def main() -> None:
    """Console entry: usage errors (unknown option, wrong type, missing option) are one line and exit 2 too."""
    run_app(app)


if __name__ == "__main__":
    main()
