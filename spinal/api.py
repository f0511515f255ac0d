"""The public API's verbs beyond capture and analyze: compare, report and run as the command line runs them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from spinal.analyze.compare.comparison import Comparison
    from spinal.analyze.trace import Trace
    from spinal.cluster.run import RunSummary
    from spinal.config import CompareConfig, RunConfig


def _traces(traces: Sequence["Trace | str | Path"]) -> list["Trace"]:
    from spinal.analyze.trace import Trace

    return [t if isinstance(t, Trace) else Trace.load(t) for t in traces]


def compare(traces: Sequence["Trace | str | Path"], cfg: "CompareConfig | None" = None, *,
            weights: Sequence[str] | None = None, stores: Sequence[str] | None = None, workers: int = 0,
            progress=None, **options) -> "Comparison":
    """The comparison `spinal compare` makes: ``traces`` (Trace objects or trace folders, the reference first)
    with paired statistics per layer, the series view, and, given ``weights`` (one checkpoint folder per trace),
    the per-block parameter change, given ``stores`` (one per trace), the cross-readout lens and the position
    profile. ``cfg`` or keyword ``options`` (fields of CompareConfig) set the statistics; save with
    ``result.save(folder)``."""
    from spinal.analyze.compare.pipeline import comparison
    from spinal.config import CompareConfig

    if cfg is None:
        cfg = CompareConfig(**options)
    elif options:
        raise TypeError(f"give either cfg or options ({', '.join(sorted(options))}), not both")
    return comparison(_traces(traces), cfg, weights=list(weights) if weights else None,
                      stores=list(stores) if stores else None, workers=workers, progress=progress)


def report(traces: Sequence["Trace | str | Path"], comparison: "Comparison | str | Path | None", out: str | Path,
           overwrite: bool = False) -> Path:
    """The report `spinal report` writes: ``out/report.html`` (self-contained) and ``out/plots/*.png``."""
    from spinal.analyze.compare.comparison import Comparison
    from spinal.analyze.report.html import write_report

    if comparison is not None and not isinstance(comparison, Comparison):
        comparison = Comparison.load(comparison)
    return write_report(_traces(traces), comparison, out, overwrite=overwrite)


def run(cfg: "RunConfig | str | Path", **kwargs) -> "RunSummary":
    """`spinal run`: every stage for every checkpoint of a run config (a RunConfig or a TOML path)."""
    from spinal.cluster.run import run as run_all
    from spinal.config import load_run_config

    if not hasattr(cfg, "checkpoints"):
        cfg = load_run_config(str(cfg))
    return run_all(cfg, **kwargs)
