"""The terminal around the verbs: errors as one line with an exit code, logging levels, progress bars."""

from __future__ import annotations

import functools
import logging
import sys
import time

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spinal.errors import SpinalError

err = Console(stderr=True, soft_wrap=True)
out = Console()


_WHOLE = "nothing was written (outputs appear whole or not at all) and nothing stored before was touched"
INTERRUPTED = {  # what a Ctrl-C leaves, per verb
    "capture": "finished units are kept (rerun with --resume)",
    "run": "finished stages and units are kept (rerun with --resume)",
    "analyze": _WHOLE, "compare": _WHOLE, "report": _WHOLE,
}


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
            err.print(f"interrupted; {INTERRUPTED.get(fn.__name__, 'nothing stored before was touched')}",
                      highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def hf_bars(progress: bool) -> None:
    """--no-progress silences transformers' own bars too (loading shards, dequantizing a GGUF)."""
    if not progress:
        import os

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ["TQDM_DISABLE"] = "1"  # the GGUF dequantizer calls plain tqdm, which reads this at each bar
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets' own bars (loading, converting shards)
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:  # pragma: no cover
            pass


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # transformers is optional for inspect/verify
        pass


class Bar:
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


class StageBars:
    """One progress bar per (stage, checkpoint) for `spinal run` on a terminal. Where stderr is not a terminal (a log
    file, a pipe), log lines instead, each with the run's elapsed time: one when a stage of a checkpoint starts, its
    count at most every ``LOG_EVERY_S`` seconds while it runs, and one when it ends or is reused."""

    LOG_EVERY_S = 30.0

    def __init__(self, enabled: bool):
        self.lines = enabled and not err.is_terminal
        self.p = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
            disable=not enabled or self.lines,
        )
        self.tasks: dict = {}
        self.t0 = time.perf_counter()
        self.logged: dict = {}  # (stage, label) -> when its count was last logged

    def log(self, stage: str, label: str, text: str) -> None:
        s = int(time.perf_counter() - self.t0)
        err.print(f"[{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}] {stage:<8} {label}: {text}", highlight=False,
                  soft_wrap=True)

    def stage(self, event: str, stage: str, label: str, detail: str = "") -> None:
        """A stage of a checkpoint "started", "done" (detail: its time and one-line result) or "reused"."""
        if self.lines:
            self.log(stage, label, f"{event}{f' ({detail})' if detail else ''}")

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def __call__(self, stage: str, label: str, done: int, total: int) -> None:
        key = (stage, label)
        if self.lines:
            now = time.perf_counter()
            if done < total and now - self.logged.get(key, -self.LOG_EVERY_S) >= self.LOG_EVERY_S:
                self.logged[key] = now
                self.log(stage, label, f"{done:,}/{total:,} {'tok' if stage == 'capture' else 'tasks'}")
            return
        if key not in self.tasks:
            unit = "tok" if stage == "capture" else "tasks"
            self.tasks[key] = self.p.add_task(f"{stage:<8} {label} ({unit})", total=total)
        self.p.update(self.tasks[key], completed=done, total=total)


def run_app(app: typer.Typer) -> None:
    """Run the app as the console entry: usage errors (unknown option, wrong type, missing option) are one
    line and exit 2 too, like every SpinalError."""
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
