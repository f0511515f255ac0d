"""`spinal run`: capture → analyze → compare → report for every checkpoint of a run config, resumable stage by stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from spinal.cluster.backends import Backend, backend_for
from spinal.config import AnalyzeConfig, CaptureConfig, ClusterConfig, CompareConfig, RunConfig
from spinal.errors import InputError
from spinal.fields import default_of
from spinal.store.lock import StoreLock
from spinal.store.lockfile import LOCK_NAME
from spinal.outputs import MARKER, check_output, move_aside, write_marker, write_text_atomic
from spinal.store.location import store_exists
from spinal.store.contract import Store

log = logging.getLogger(__name__)

# Events for the CLI: (stage, label, done, total); stage in capture/analyze/compare/report.
Progress = Callable[[str, str, int, int], None]
# Stage events for the CLI's log lines: (event, stage, label, detail); event in started/done/reused.
StageEvent = Callable[[str, str, str, str], None]


@dataclass
class RunSummary:
    out: str
    stages: list[dict] = field(default_factory=list)  # stage, label, seconds, skipped, detail
    report: str | None = None
    comparison: str | None = None

    def add(self, stage: str, label: str, seconds: float, skipped: bool, detail: str = "") -> None:
        self.stages.append({"stage": stage, "label": label, "seconds": round(seconds, 2), "skipped": skipped,
                            "detail": detail})
        if self.on_stage is not None:
            self.on_stage("reused" if skipped else "done", stage, label,
                          detail if skipped else "; ".join(x for x in (f"{seconds:.1f} s", detail) if x))

    on_stage: ClassVar[StageEvent | None] = None  # set per run (not a field: summary.json holds no callback)

    @contextmanager
    def timed(self, stage: str, label: str):
        """Time a stage that runs; the body may append its one-line detail to the yielded list."""
        if self.on_stage is not None:
            self.on_stage("started", stage, label, "")
        t0, detail = time.perf_counter(), []
        yield detail
        self.add(stage, label, time.perf_counter() - t0, False, "; ".join(detail))


def _record(cfg: RunConfig, prompts_sha256: str | None) -> dict:
    return json.loads(json.dumps({**cfg.record(), "prompts_sha256": prompts_sha256}, default=str))


def _with_defaults(old: dict) -> dict:
    """A run.json written before the tables were typed holds only the options given: fill in the defaults."""
    old = dict(old)
    for table, cls in (("capture", CaptureConfig), ("analyze", AnalyzeConfig), ("compare", CompareConfig),
                       ("cluster", ClusterConfig)):
        skip = getattr(cls, "RUN_SETS", frozenset())
        defaults = {f.name: default_of(f) for f in dataclasses.fields(cls) if f.name not in skip}
        defaults = {k: v for k, v in defaults.items() if v is not dataclasses.MISSING}
        if isinstance(old.get(table), dict):
            old[table] = {**defaults, **old[table]}
    return json.loads(json.dumps(old, default=str))


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def prepare_out(cfg: RunConfig, resume: bool, overwrite: bool, prompts_sha256: str | None = None
                ) -> tuple[Path, StoreLock]:
    """Take the run folder's writer lock, then create the folder, or check a resumed one was made by the
    same config and prompts. Returns the folder and the held lock (one `spinal run` per folder).

    ``--overwrite`` replaces only a SPINAL run folder that holds nothing else (moved aside whole, then
    deleted); anything else at the path is refused with nothing touched.
    """
    out = Path(cfg.out)
    record = _record(cfg, prompts_sha256)
    rec_file = out / "run.json"
    check_output(out, "run", overwrite, flag="--resume to finish it or --overwrite to start again", resume=resume)
    lock = StoreLock(str(out)).acquire()
    try:
        if overwrite and any(n.name != LOCK_NAME for n in out.iterdir()):
            move_aside(out)  # the old run goes whole, with the lock we held in it
            lock.release()
            lock = StoreLock(str(out)).acquire()
        elif rec_file.exists():
            try:
                old = json.loads(rec_file.read_text())
            except ValueError:
                raise InputError(f"{rec_file} cannot be read; start again with --overwrite") from None
            diff = _changes(_with_defaults(old), record)
            if diff:
                raise InputError(f"--resume refused: the config or the prompt file changed since {out} was started "
                                 f"({'; '.join(diff[:4])}); start again with --overwrite or use another [run] out")
        write_text_atomic(rec_file, json.dumps(record, indent=2))
        if not (out / MARKER).exists():
            write_marker(out, "run", digests=False)
    except BaseException:
        lock.release()
        raise
    return out, lock


def check_inputs(cfg: RunConfig) -> str:
    """Everything that can be checked before any model is loaded; returns the prompt set's hash."""
    from spinal.capture.load import check_adapter, check_checkpoint
    from spinal.capture.inputs.prompts import load_prompts

    prompts = load_prompts(cfg.prompts, cfg.capture.prompt_options())
    for ck in cfg.checkpoints:
        check_checkpoint(ck.path, allow_pickle=cfg.capture.allow_pickle, trust_remote_code=cfg.capture.trust_remote_code,
                         revision=ck.hub_revision)
        if ck.adapter:
            check_adapter(ck.adapter)
    return prompts.sha256


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
        address: str | None = None, service: bool = False, on_stage: StageEvent | None = None) -> RunSummary:
    """Run every stage: in-process for one replica without an address, else on Ray (local or ``address``), or on
    the replicas `spinal serve` started (``service``). The backend connects before the run folder is touched.
    With [capture] reply = 'both': one run per reply side, then each checkpoint's sides compared (``_run_sides``)."""
    if cfg.capture.reply == "both":
        return _run_sides(cfg, resume=resume, overwrite=overwrite, progress=progress, address=address,
                          service=service, on_stage=on_stage)
    prompts_sha256 = check_inputs(cfg)
    cluster = cfg.cluster_config(**({"address": address} if address else {}))
    backend = backend_for(cluster, {ck.path: ck.label for ck in cfg.checkpoints} if service else None)
    out, lock = prepare_out(cfg, resume, overwrite, prompts_sha256)
    try:
        summary = RunSummary(str(out))
        summary.on_stage = on_stage
        traces = []
        for ck in cfg.checkpoints:
            store = _capture_stage(cfg, ck, backend, progress, summary)
            floor = int(traces[0].meta.get("lens_tokens") or 0) if traces else 0
            traces.append(_analyze_stage(cfg, ck, store, backend, progress, summary, floor))
        comparison = _compare_stage(cfg, traces, backend, progress, summary) if len(traces) >= 2 else None
        with summary.timed("report", "all"):
            from spinal.analyze.report.html import write_report

            summary.report = str(write_report(traces, comparison, out / "report", overwrite=True))
        write_text_atomic(out / "summary.json", json.dumps(asdict(summary), indent=2))
        return summary
    finally:
        lock.release()


def _run_sides(cfg: RunConfig, *, resume: bool, overwrite: bool, on_stage: StageEvent | None = None,
               **kw) -> RunSummary:
    """Both reply sides of a preference set: a whole run per side in OUT/chosen and OUT/rejected (stores, traces,
    each side's comparison and report), then every checkpoint's rejected replies against its chosen ones, paired
    by prompt, in OUT/sides/LABEL (compare/ and report/). Both prompt sets are read before any model loads."""
    from dataclasses import replace

    from spinal.analyze.compare.pipeline import comparison
    from spinal.analyze.report.html import write_report
    from spinal.analyze.trace import Trace

    sides = cfg.sides()
    hashes = [check_inputs(side) for side in sides]
    out, lock = prepare_out(cfg, resume, overwrite, " ".join(hashes))
    try:
        summary = RunSummary(str(out))
        summary.on_stage = on_stage
        for side in sides:
            tell = on_stage and (lambda e, st, label, d, r=side.capture.reply: on_stage(e, st, f"{label} ({r})", d))
            part = run(side, resume=resume and Path(side.out).exists(), on_stage=tell or None, **kw)
            summary.stages += [{**st, "label": f"{st['label']} ({side.capture.reply})"} for st in part.stages]
            summary.report = summary.report or part.report
        for ck in cfg.checkpoints:
            with summary.timed("sides", ck.label) as detail:
                traces = [Trace.load(side.trace_path(ck)) for side in sides]
                result = comparison(traces, replace(cfg.compare, pairing="prompt"))
                result.save(out / "sides" / ck.label / "compare", overwrite=True)
                path = write_report(traces, result, out / "sides" / ck.label / "report", overwrite=True)
                detail.append(f"rejected against chosen, paired by prompt: {path}")
        summary.comparison = str(out / "sides")
        write_text_atomic(out / "summary.json", json.dumps(asdict(summary), indent=2))
        return summary
    finally:
        lock.release()


def _bar(progress: Progress | None, stage: str, label: str):
    return (lambda d, t: progress(stage, label, d, t)) if progress else None


def _capture_stage(cfg: RunConfig, ck, backend: Backend, progress: Progress | None, summary: RunSummary) -> str:
    """The checkpoint's store, captured (or finished) unless it is complete already."""
    store = cfg.store_path(ck)
    if store_exists(store) and Store.open(store).complete:
        summary.add("capture", ck.label, 0.0, True, "store complete")
        return store
    with summary.timed("capture", ck.label) as detail:
        res = backend.capture(cfg.capture_config(ck, store, resume=store_exists(store)),
                              _bar(progress, "capture", ck.label))
        n = res.units_written
        detail.append(f"{res.tokens:,} tokens, {n} unit{'s' * (n != 1)} written, {res.units_skipped} reused")
    return store


def _analyze_stage(cfg: RunConfig, ck, store: str, backend: Backend, progress: Progress | None,
                   summary: RunSummary, lens_floor: int = 0):
    """The checkpoint's trace: reused when whole, else analyzed from its store, its lens subsample at least
    ``lens_floor`` tokens (the reference's, so the checkpoints' L are read on the same tokens)."""
    from spinal.analyze.trace import analyze

    tdir = cfg.trace_path(ck)
    reused = _reusable_trace(Path(tdir))
    if reused is not None:
        summary.add("analyze", ck.label, 0.0, True, "trace exists")
        return reused
    with summary.timed("analyze", ck.label) as detail:
        tr = analyze(cfg.analyze_config(store, tdir, overwrite=True), progress=_bar(progress, "analyze", ck.label),
                     label=ck.label, submit=backend.submit, lens_floor=lens_floor)
        tr.save(tdir, overwrite=True)
        detail.append(f"path length {tr.meta['path_length']:.4g}")
    return tr


def _compare_stage(cfg: RunConfig, traces: list, backend: Backend, progress: Progress | None, summary: RunSummary):
    """Every checkpoint against the first, written to compare/; its lens tasks (cross-readout, positions) run on
    the backend that ran the analysis (Ray on a cluster, else the local pool)."""
    from spinal.analyze.compare.pipeline import comparison

    with summary.timed("compare", ",".join(t.label for t in traces)) as detail:
        c = cfg.compare
        result = comparison(traces, c, weights=[ck.path for ck in cfg.checkpoints] if c.weights else None,
                            stores=[cfg.store_path(ck) for ck in cfg.checkpoints]
                            if c.cross_readout_tokens or c.position_tokens else None,
                            weights_optional=True, workers=cfg.analyze.workers, submit=backend.submit,
                            progress=_bar(progress, "compare", "lens tasks"))
        result.save(Path(cfg.out) / "compare", overwrite=True)
        summary.comparison = str(Path(cfg.out) / "compare")
        if result.series is not None:
            bad = [str(x) for x in result.series.loc[result.series["destabilized"].astype(bool), "label"]]
            detail.append(f"flagged destabilized: {', '.join(bad)}" if bad else "no checkpoint flagged destabilized")
    return result


def _reusable_trace(tdir: Path):
    """A trace folder of this run that is whole (every digest matches), or None to redo it."""
    from spinal.analyze.trace import Trace

    if not (tdir / "trace.json").exists():
        return None
    try:
        return Trace.load(tdir)
    except InputError as e:
        log.warning("redoing the trace in %s: %s", tdir, e)
        return None
