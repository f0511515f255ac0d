"""One round of a training audit: trace every captured step not traced yet, then extend the series comparison,
apply the destabilization rule against the run's own history, and replace the report.

The rule is causal (analyze/compare/stability.py: a step is judged against the earlier steps only), so a step's
row never changes as later steps arrive: series.jsonl only grows, and its rows equal the offline audit's of the
same checkpoints (`spinal run` on a TOML naming them), which tests/monitor checks.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from spinal.analyze.compare.aggregates import nanmean, steps_into
from spinal.analyze.compare.comparison import Comparison
from spinal.analyze.compare.pipeline import comparison
from spinal.analyze.compare.stability import COMPONENTS
from spinal.analyze.report.html import write_report
from spinal.analyze.trace import Trace, analyze
from spinal.errors import InputError
from spinal.monitor.config import MonitorConfig
from spinal.monitor.folder import AuditFolder, label

log = logging.getLogger(__name__)

# What each audited step reports to the trainer's trackers (and series.jsonl): name -> its meaning.
NUMBERS = {
    "terminal_delta_a": "mean Δa over the terminal window against the reference",
    "terminal_delta_L": "mean ΔL over the steps into the terminal window against the reference",
    "path_length": "Σ L over depth of this step's trace",
    **{f"jump_ratio_{c}": f"{name} step from the save before, over the run's typical healthy step"
       for c, name in COMPONENTS.items()},
    "destabilized": "1 when the step is flagged (any jump ratio over the factor, beyond its noise)",
}


def trace_of(folder: AuditFolder, cfg: MonitorConfig, step: int | None, lens_floor: int = 0) -> Trace:
    """The step's trace: read back when whole, else analyzed from its store (and written whole)."""
    tdir = folder.trace(step)
    if (tdir / "trace.json").exists():
        try:
            return Trace.load(tdir)
        except InputError as e:
            log.warning("redoing the trace of %s: %s", label(step), e)
    tr = analyze(cfg.analyze_config(folder.store(step), str(tdir)), label=label(step), lens_floor=lens_floor)
    tr.save(tdir, overwrite=True)
    return tr


def audit_round(folder: AuditFolder, cfg: MonitorConfig) -> list[dict]:
    """Trace what is captured, and when a step is new, redo the comparison; returns the series rows added (one per
    newly audited step, in step order). The report is the caller's (``refresh_report``): drawing it costs more
    than the round, so it is drawn once the audit has caught up, not after every step of a backlog."""
    if not folder.complete(None):
        return []
    steps = folder.captured_steps()
    known = {r["step"] for r in folder.read_series()}
    new = [s for s in steps if s not in known]
    if not new:
        return []
    ref = trace_of(folder, cfg, None)
    floor = int(ref.meta.get("lens_tokens") or 0)
    traces = [ref] + [trace_of(folder, cfg, s, floor) for s in steps]
    c = cfg.compare
    stores = [folder.store(None)] + [folder.store(s) for s in steps]
    result = comparison(traces, c, stores=stores if c.cross_readout_tokens or c.position_tokens else None,
                        workers=1)
    result.save(folder.root / "compare", overwrite=True)
    rows = series_rows(result, traces, steps)
    old = folder.read_series()
    added = [r for r in rows if r["step"] in new]
    folder.write_series(old + added)
    return added


def series_rows(result: Comparison, traces: list[Trace], steps: list[int]) -> list[dict]:
    """One row per audited step: the NUMBERS, the flag's reason, and the step's label."""
    if result.series is not None:
        series = result.series.set_index("label")
    rows = []
    for i, (step, tr) in enumerate(zip(steps, traces[1:])):
        pair = result.pairs[i]
        T = pair.table["terminal"].to_numpy()
        row = {"step": step, "label": tr.label,
               "terminal_delta_a": nanmean(pair.table["d_a"].to_numpy()[T]),
               "terminal_delta_L": nanmean(pair.table["d_L"].to_numpy()[steps_into(T)]),
               "path_length": float(tr.meta["path_length"])}
        s = series.loc[tr.label] if result.series is not None else {}
        for c in COMPONENTS:
            row[f"jump_ratio_{c}"] = _number(s.get(f"step_{c}_ratio", math.nan))
        row["destabilized"] = int(bool(s.get("destabilized", False)))
        reason = s.get("reason", "") if result.series is not None else "first step: no earlier step to compare with"
        row["reason"] = reason if isinstance(reason, str) else ""
        rows.append(row)
    return rows


def _number(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def audit_all(folder: AuditFolder, cfg: MonitorConfig) -> list[dict]:
    """Rounds until nothing new is captured, then the report (what the in-process monitor runs at a save)."""
    added: list[dict] = []
    while rows := audit_round(folder, cfg):
        added += rows
    if added:
        refresh_report(folder)
    return added


def refresh_report(folder: AuditFolder) -> Path:
    """The report of the series so far, from the traces and the comparison on disk, replaced whole."""
    steps = [r["step"] for r in folder.read_series()]
    traces = [Trace.load(folder.trace(None))] + [Trace.load(folder.trace(s)) for s in steps]
    result = Comparison.load(folder.root / "compare") if steps else None
    return write_report(traces, result, folder.root / "report", overwrite=True)


def report_path(folder: AuditFolder) -> Path:
    return folder.root / "report" / "report.html"
